"""SAM 3 (``Sam3Model``): every instance of a noun phrase in an image, without torchvision.

`load_sam3` builds the `SamBundle` (the CLIP
tokenizer is its ``processor``); the text runtime is split like SAM's
(`geosam.models.runtime`) so that a chip's vision backbone runs once for
all phrases and the phrases' text encoding runs once per run:

1. `encode_text` - phrases -> text features (CLIP text encoder);
2. `vision_features` - ``pixel_values`` (one chip, from
   `geosam.models.runtime.preprocess`: square resize to ``input_size``) -> backbone features;
3. `detect` - backbone features x phrases -> DETR decoder queries: mask logits
   (low-res frame: ``pred_masks`` (P, Q, m, m) over the whole resized chip), scores;
4. `instances` - transformers' ``post_process_instance_segmentation``
   re-implemented (score = sigmoid(logit) x sigmoid(presence), kept when > threshold;
   mask = bilinear resize of sigmoid(mask logits) to the chip size > mask threshold).

transformers' ``Sam3Processor`` imports torchvision (its image processor), so
geosam reads ``preprocessor_config.json`` as JSON and tokenizes with the
checkpoint's tokenizer directly. Box exemplars (`geosam.models.sam3_exemplars`)
need ``torchvision.ops.roi_align`` in the geometry encoder: `load_sam3` gives
that module geosam's exact plain-torch version when torchvision is missing
(`geosam.models.roi_align.use_for_sam3`).
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from geosam.models.bundle import ModelCapabilities, SamBundle
from geosam.models.compile import use_fast_sam3_vit
from geosam.models.cpu_memory import heap_blocks, keep_freed_memory
from geosam.models.families import load_pretrained, preprocessing
from geosam.models.hf_sam import load_error

log = logging.getLogger(__name__)

SAM3_CAPABILITIES = ModelCapabilities(point_prompts=False, box_prompts=False, segment_everything=False,
                                      text_prompts=True, exemplars=True, family="sam3")
#: SAM 3's image normalisation (IMAGENET_STANDARD: 0.5, 0.5) and text length (tokens, padded)
SAM3_MEAN_STD = (0.5, 0.5, 0.5)
TEXT_LENGTH = 32
#: transformers' post_process_instance_segmentation defaults
DEFAULT_SCORE_THRESHOLD = 0.3
DEFAULT_MASK_THRESHOLD = 0.5


def load_sam3(name: str, device: torch.device, dtype: torch.dtype) -> SamBundle:
    """A transformers SAM 3 checkpoint (``model_type == "sam3"``) with its tokenizer, as a `SamBundle`."""
    from transformers import AutoTokenizer

    from geosam.models.roi_align import use_for_sam3

    model, pp, source, kwargs = load_pretrained(name, "Sam3Model", device)
    use_for_sam3()  # box exemplars: plain-torch roi_align where torchvision is missing (scoped to SAM 3's module)
    use_fast_rope()  # the ViT's rotary embedding in one pass, the same bits (scoped to SAM 3's module)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError, TypeError) as exc:
        raise load_error(name, f"it has no usable tokenizer files ({exc}); SAM 3 needs its CLIP tokenizer "
                               "(tokenizer.json or vocab.json + merges.txt) saved beside the model") from exc
    size = int(model.config.vision_config.image_size)
    return SamBundle(model=model, processor=tokenizer, device=device, dtype=dtype, name=name,
                     **preprocessing(pp, SAM3_MEAN_STD, SAM3_MEAN_STD), longest_edge=size, input_size=size,
                     resize="square", capabilities=SAM3_CAPABILITIES, fast_decoder=False)


def use_fast_rope() -> bool:
    """Give transformers' SAM 3 module geosam's one-pass rotary embedding for its ViT's queries and keys
    (`geosam.models.cpu_convert.rope`: the same bits as its ``apply_rotary_pos_emb_2d``, in one pass instead of
    seven; the module's own function where the kernel does not run). Scoped: only
    ``transformers.models.sam3.modeling_sam3.apply_rotary_pos_emb_2d`` is replaced, and only if that function
    gives `geosam.models.cpu_convert.rope_reference`'s bits (the formula the kernel computes). Full-size SAM 3, Intel
    Xeon with AMX, a 1008 px chip's backbone in bf16: 10.2-10.5 -> 8.6-9.2 s on one thread, 5.5-5.6 -> 4.6-4.8 s on
    two, the same output (float32: within noise, 21-22 s on two). Returns True when it is in use."""
    import importlib

    from geosam.models.cpu_convert import rope, rope_reference

    module = importlib.import_module("transformers.models.sam3.modeling_sam3")
    original = getattr(module, "apply_rotary_pos_emb_2d", None)
    if original is None:
        return False
    if getattr(original, "geosam_rope", False):
        return True
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn((1, 2, 5, 16), generator=gen) for _ in "qk")
    ang = torch.rand((1, 5, 8), generator=gen) * 20
    cos, sin = ang.cos().repeat_interleave(2, -1), ang.sin().repeat_interleave(2, -1)
    want = original(q, k, cos=cos, sin=sin)
    if not (torch.equal(want[0], rope_reference(q, cos, sin)) and torch.equal(want[1], rope_reference(k, cos, sin))):
        log.info("SAM 3: transformers' rotary embedding is not the formula geosam's kernel computes; left as is")
        return False

    def apply_rotary_pos_emb_2d(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                                sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q2 = rope(q, cos, sin)
        k2 = rope(k, cos, sin) if q2 is not None else None
        if q2 is None or k2 is None:
            return original(q, k, cos=cos, sin=sin)
        return q2, k2

    apply_rotary_pos_emb_2d.geosam_rope = True  # type: ignore[attr-defined]
    apply_rotary_pos_emb_2d.original = original  # type: ignore[attr-defined]
    module.apply_rotary_pos_emb_2d = apply_rotary_pos_emb_2d  # type: ignore[attr-defined]
    return True


#: Sam3Model parts ``torch.compile``d by `compile_sam3`: what runs per chip (the geometry encoder runs once)
SAM3_COMPILED = ("vision_encoder", "detr_encoder", "detr_decoder", "mask_decoder")


def compile_sam3(bundle: SamBundle) -> SamBundle:
    """``torch.compile`` the per-chip parts of a SAM 3 model (`SAM3_COMPILED`), once, in place.

    The text encoder and the exemplar encoder run once per run and stay eager. The first chip is
    slow (tracing); later chips of the same size reuse the compiled graphs. Returns the bundle.
    """
    model = bundle.model
    if getattr(model, "_geosam_compiled", False):
        return bundle
    for name in SAM3_COMPILED:
        setattr(model, name, torch.compile(getattr(model, name)))
    model._geosam_compiled = True
    return bundle


@dataclass
class TextFeatures:
    """Encoded phrases: ``phrases`` (P), the model's text output (``pooler_output`` (P, T, C)) and
    ``attention_mask`` (P, T)."""

    phrases: tuple[str, ...]
    embeds: Any
    attention_mask: torch.Tensor


def encode_text(bundle: SamBundle, phrases: list[str] | tuple[str, ...]) -> TextFeatures:
    """Tokenize (CLIP, padded to 32 tokens as ``Sam3Processor``) and encode ``phrases``."""
    tok = bundle.processor(list(phrases), return_tensors="pt", padding="max_length", max_length=TEXT_LENGTH,
                           truncation=True)
    ids = tok["input_ids"].to(bundle.device)
    mask = tok["attention_mask"].to(bundle.device)
    with torch.inference_mode():
        embeds = bundle.model.get_text_features(input_ids=ids, attention_mask=mask, return_dict=True)
    return TextFeatures(tuple(phrases), embeds, mask)


def vision_features(bundle: SamBundle, pixel_values: torch.Tensor) -> Any:
    """The vision backbone's output for ``pixel_values`` (1, 3, S, S) (model frame), computed in the bundle's dtype
    (autocast, as every family's encoder) and returned in float32 (the detector and the exemplars' geometry
    encoder take float32 features). On the CPU glibc keeps freed memory for reuse first (`keep_freed_memory`, as
    `geosam.models.encode` does; SAM 3's path never went through it: `benchmarks/bench_sam3_change.py`, Intel Xeon
    with AMX, two threads, full-size random weights, bf16, a 1008 px chip and two phrases: 680 -> 544 thousand fresh
    pages from the kernel a chip, system CPU time 1.48 -> 1.18 s, the backbone 5.39 -> 5.23 s, the detector 1.52 ->
    1.48 s, the same outputs); and inside `geosam.models.cpu_memory.heap_blocks`, so that the ViT's 49 MB MLP
    activations come from the heap, used again by each layer (the backbone 4.40 -> 3.89 s, 519 -> 146 thousand fresh
    pages a chip, same machine and benchmark)."""
    if bundle.device.type == "cpu":
        keep_freed_memory()
    with heap_blocks() if bundle.device.type == "cpu" else contextlib.nullcontext():
        vision = _vision(bundle, pixel_values)
    return vision if bundle.dtype == torch.float32 else _mapped(vision, lambda t: t.float())


def _vision(bundle: SamBundle, pixel_values: torch.Tensor) -> Any:
    """`vision_features` in the bundle's dtype."""
    if use_fast_sam3_vit(bundle):  # the ViT through oneDNN's fused operators, on the CPU
        from geosam.models.fast_sam3_vit import fast_vision_features

        return fast_vision_features(bundle.model, pixel_values.to(bundle.device), bundle.dtype)
    with torch.inference_mode(), bundle.autocast():
        return bundle.model.get_vision_features(pixel_values=pixel_values.to(bundle.device))


def _mapped(vision: Any, fn: Any) -> Any:
    """Backbone features with ``fn`` applied to each tensor (in tuples too)."""
    from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

    def each(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return fn(v)
        if isinstance(v, (tuple, list)):
            return tuple(each(x) for x in v)
        return v

    return Sam3VisionEncoderOutput(**{k: each(v) for k, v in vision.items()})


def _repeat(vision: Any, n: int) -> Any:
    """Backbone features of one image, viewed as a batch of ``n`` (one per phrase; no copy)."""
    return _mapped(vision, lambda v: v.expand(n, *v.shape[1:]))


def detect(bundle: SamBundle, vision: Any, text: TextFeatures, input_boxes: torch.Tensor | None = None,
           input_boxes_labels: torch.Tensor | None = None) -> Any:
    """SAM 3's detector and mask decoder for every phrase on one image's backbone features.

    input_boxes: optional exemplar boxes (P, K, 4), normalised (cx, cy, w, h) in the model frame;
    input_boxes_labels (P, K): 1 positive, 0 negative. Returns the model output with
    ``pred_logits`` (P, Q), ``presence_logits`` (P, 1), ``pred_masks`` (P, Q, m, m), ``pred_boxes``.
    """
    from geosam.models.sam3_detector import faster_detector

    if bundle.device.type == "cpu":
        keep_freed_memory()
    n = len(text.phrases)
    with torch.inference_mode(), bundle.autocast(), faster_detector(bundle):  # the bundle's dtype, as the backbone
        return bundle.model(vision_embeds=_repeat(vision, n), text_embeds=text.embeds,
                            attention_mask=text.attention_mask, input_boxes=input_boxes,
                            input_boxes_labels=input_boxes_labels)


def instances(outputs: Any, target_size: tuple[int, int], threshold: float = DEFAULT_SCORE_THRESHOLD,
              mask_threshold: float = DEFAULT_MASK_THRESHOLD) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per phrase ``(scores (K,), masks (K, H, W) bool)`` as ``Sam3Processor.post_process_instance_segmentation``.

    target_size: (H, W) of the chip (px); the masks cover the whole chip (SAM 3's
    square resize has no padding).
    """
    scores = outputs.pred_logits.float().sigmoid()
    if outputs.presence_logits is not None:
        scores = scores * outputs.presence_logits.float().sigmoid()
    out = []
    for s, m in zip(scores, outputs.pred_masks.float()):
        keep = s > threshold
        s, m = s[keep], m[keep].sigmoid()
        if len(m) > 0:
            m = F.interpolate(m[None], size=tuple(target_size), mode="bilinear", align_corners=False)[0]
        else:
            m = m.new_zeros((0, *target_size))
        out.append((s, m > mask_threshold))
    return out


# ---------------------------------------------------------------------------
# a CLIP tokenizer from the BPE merges file (offline)


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's (GPT-2's) reversible byte -> printable-unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_clip_tokenizer(out_dir: str | os.PathLike[str], merges: list[str] | None = None,
                         bpe_path: str | os.PathLike[str] | None = None) -> Any:
    """Write a CLIP tokenizer into ``out_dir`` (``save_pretrained`` files) and return it.

    bpe_path: CLIP's ``bpe_simple_vocab_16e6.txt.gz`` (e.g. from the PyPI wheel
    ``open_clip_torch``): the real tokenizer, 49408 ids. merges: else, a list of
    "a b" merge lines (a small tokenizer for tests; ids 0..511 are the byte
    symbols, then one id per merge, then the two special tokens).
    """
    from transformers import CLIPTokenizer

    if bpe_path is not None:
        with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
            merges = f.read().split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = list(merges or [])
    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(out_dir, exist_ok=True)
    vocab = {t: i for i, t in enumerate(vocab_list)}
    pairs: list[Any] = [tuple(m.split()) for m in merges]
    tok = CLIPTokenizer(vocab=vocab, merges=pairs)
    tok.save_pretrained(out_dir)
    return tok


__all__ = [
    "DEFAULT_MASK_THRESHOLD",
    "DEFAULT_SCORE_THRESHOLD",
    "SAM3_CAPABILITIES",
    "SAM3_COMPILED",
    "TextFeatures",
    "compile_sam3",
    "detect",
    "encode_text",
    "instances",
    "load_sam3",
    "vision_features",
    "write_clip_tokenizer",
]
