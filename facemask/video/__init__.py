"""Video and many cameras:

batch     predict(): Ray Data over folders and videos
streams   `facemask predict` on a camera or stream URL, in one process
watch/    `facemask watch`: readers, a batched detector, tracking, compliance windows, the grid page
"""

from facemask import public_parts

__getattr__, __all__ = public_parts(__name__, {"predict": "batch", "predict_stream": "streams"})
