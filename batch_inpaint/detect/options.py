"""The detection options of a job (YAML keys / `run` flags in group "detection"): what to find
and remove, with which models, and whether to verify the outputs (docs/masks.md). JobConfig
nests them as `detection`, like the per-image options; the flat keys (`detect`, `verify`, ...)
read and write through it. A row's `detect` column overrides `detect` for that row."""

from __future__ import annotations

from dataclasses import dataclass

from batch_inpaint.errors import ConfigError
from batch_inpaint.option import OptionError, check_fields, option


def _queries(v: list[str]) -> str | None:
    from batch_inpaint.detect.base import parse_queries

    try:
        parse_queries(v)
    except ConfigError as exc:
        return str(exc)
    return None


def _model_ref(v: str) -> str | None:
    return "must not be empty (unset it, or 'none' to turn it off)" if not v.strip() else None


@dataclass(frozen=True)
class DetectionOptions:
    # fmt: off
    detect: list[str] = option(factory=list, flag=False, check=_queries,
                               help="things to find and inpaint, e.g. 'watermark,text' "
                               "(comma-separated or repeated); rows get their mask from them")
    detector: str | None = option(None, flag=False, check=_model_ref,
                                  help="open-vocabulary detector, Grounding DINO: Hub id, local "
                                  "folder or s3:// prefix (unset: IDEA-Research/"
                                  "grounding-dino-tiny; 'none': off)")
    detector_revision: str | None = option(None, flag=False,
                                           help="Hub commit to pin the detector to")
    text_detector: str | None = option(None, flag=False, check=_model_ref,
                                       help="text detector for the text queries: 'rapidocr' "
                                       "(PP-OCRv6 small det shipped in the rapidocr wheel, "
                                       "offline) or a PP-OCR det checkpoint, e.g. PaddlePaddle/"
                                       "PP-OCRv6_medium_det_safetensors (unset: rapidocr; "
                                       "'none': off)")
    text_detector_revision: str | None = option(None, flag=False,
                                                help="Hub commit to pin the text detector to")
    segmenter: str | None = option(None, flag=False, check=_model_ref,
                                   help="SAM checkpoint that refines boxes into pixel masks "
                                   "(unset: none, the boxes are the mask)")
    segmenter_revision: str | None = option(None, flag=False,
                                            help="Hub commit to pin the segmenter to")
    detect_threshold: float | None = option(None, flag=False, lo=0, hi=1,
                                            help="keep detections scoring at least this "
                                            "(unset: 0.3, the detector's own)")
    text_threshold: float | None = option(None, flag=False, lo=0, hi=1,
                                          help="keep text boxes whose mean text probability is "
                                          "at least this (unset: 0.5; a PP-OCR "
                                          "checkpoint's: 0.6)")
    text_min_confidence: float | None = option(None, flag=False, lo=0, hi=1,
                                               help="keep only text boxes the shipped "
                                               "recogniser reads with at least this confidence "
                                               "(drops stripes and textures; unset: all)")
    max_detections: int = option(100, flag=False, lo=1,
                                 help="at most N detections per image and detector")
    detect_dilate: int = option(0, flag=False, lo=0, hi=512,
                                help="grow each detection's mask by N px (the mask options, "
                                "e.g. --dilate, apply after)")
    detect_batch_size: int = option(4, flag=False, lo=1,
                                    help="images per detector forward pass")
    detect_actors: int = option(1, flag=False, lo=1, help="detector actor pool size")
    gpus_per_detect_actor: float | None = option(None, flag=False, lo=0, hi=8,
                                                 help="GPUs per detector actor (fractions share "
                                                 "a GPU, 0 = CPU); unset: 0.25 when the cluster "
                                                 "has GPUs, and a model actor whose share is "
                                                 "unset takes the rest of that GPU")
    cpus_per_detect_actor: float | None = option(None, flag=False, lo=0, lo_open=True,
                                                 help="CPUs per detector actor; unset: as "
                                                 "cpus_per_actor's rule")
    verify: bool = option(False, flag=False,
                          help="detect again on each output and record residual_score")
    max_residual: float | None = option(None, flag=False, lo=0, hi=1,
                                        help="with verify: rows whose residual_score is above "
                                        "this become errors (kind residual); unset: no limit")
    # fmt: on

    def __post_init__(self) -> None:
        if isinstance(self.detect, str | list | tuple):  # 'a,b' or ['a', 'b,c']: one clean list
            from batch_inpaint.detect.base import parse_queries

            flat = (
                self.detect.split(",")
                if isinstance(self.detect, str)
                else [p for q in self.detect for p in (q.split(",") if isinstance(q, str) else [q])]
            )
            try:
                queries = parse_queries(flat)
            except ConfigError as exc:
                raise OptionError("detect", str(exc)) from None
            if not queries and flat:  # given ('' or ' , '), yet nothing to find: a mistake
                raise OptionError("detect", "has no query in it; give e.g. 'watermark,text', or "
                                  "leave detect unset for a job without detection")  # fmt: skip
            object.__setattr__(self, "detect", queries)
        check_fields(self)
