"""Learning from production: what the cameras see comes back as the next model's data.

sampler   which frames to keep: a score near its class's threshold, a person whose class
          flips, a rare class, a small random share; rate-limited and one per person
pool      the kept frames on disk with the model's boxes as pre-labels, written off the hot
          path (a full queue drops a sample and counts it), within size and age limits
export    the pool as a labelling task: Label Studio JSON with predictions, or Pascal VOC
          (CVAT imports it; the corrected export is read back by `facemask data prepare`)
drift     each camera's recent answers against what the version answered on val (PSI)
lineage   which dataset version trained which registered version, from the registry alone
"""

from facemask import public_parts

__getattr__, __all__ = public_parts(
    __name__,
    {"Sampler": "sampler", "SamplingRule": "sampler", "SamplePool": "pool", "export_pool": "export"},
)
