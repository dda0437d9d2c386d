"""Live video: camera and stream input, the endpoint's /live WebSocket, and the people they show.

- `tracking`: newest-frame-wins intake (`LatestFrame`) and one tracked identity per person
  (`PeopleTracker`), shared by both paths below;
- `settings`: a stream's settings (conf, iou, imgsz, max_det, model, fps) and their checks;
- `session`: the /live WebSocket, one `LiveSession` per stream, run by the server's `LiveStreams`;
- `streams`: `facemask predict` on a camera index or a stream URL, in one process.
"""
