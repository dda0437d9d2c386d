"""Labelled data in, a YOLO dataset out (`facemask data ...`):

records       Box, Record, Problem: what every reader produces
voc, yolo_folder, coco   the readers
sources       which format a source is, its items, the class map
synth         procedural demo data
split         stratified split of originals
augment       copy-paste on train only
convert       YOLO labels and data.yaml
sampling      repeat-factor sampling of rare classes
pipeline      prepare(): Ray Data or one process
drawing, plots   boxes drawn on images; dataset and study pictures
"""

from facemask import public_parts

__getattr__, __all__ = public_parts(
    __name__,
    {
        "prepare": "pipeline",
        "prepare_evaluation_set": "pipeline",
        "synthesize": "synth",
        "list_source": "sources",
        "detect_format": "sources",
        "parse_class_map": "sources",
        "Record": "records",
        "Box": "records",
    },
)
