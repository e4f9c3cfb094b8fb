"""Dictionaries the feature and graph pages read: the SAEs shipped with avec for the server's model, and
SAE / transcoder files (avec ``.safetensors``) or circuit-tracer transcoder folders under ``--data-dir``.
The browser names one (``shipped:<name>``, or a name relative to the data folder); it never gives a path.
Files are told apart by the format in their safetensors header (read without loading the tensors); a
circuit-tracer folder by its ``config.yaml``, whose listed files must lie in the data folder too."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import inputs as I

SHIPPED = "shipped:"
KINDS = ("sae", "transcoder")
_FORMATS = {"avec.sae/1": "sae", "avec.transcoder/1": "transcoder"}


@dataclass(frozen=True)
class Source:
    """A dictionary a page may read: ``name`` (what the browser sends), ``kind`` ("sae" | "transcoder"),
    ``layers`` (encoders: 1, or one per layer of a transcoder set / CLT), ``reads`` (the point each reads),
    ``d_sae`` (features per encoder, None until loaded for a circuit-tracer folder), ``path`` (None:
    shipped) and its modification time (a changed file is loaded again)."""

    name: str
    kind: str
    layers: int
    reads: tuple[str, ...]
    d_sae: int | None
    path: str | None
    mtime: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        del d["path"], d["mtime"]  # the browser sees names, not paths
        d["reads"] = list(self.reads)
        return d


def _header(path: Path) -> dict:
    """A safetensors file's metadata (the header only; {} when unreadable)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception:  # noqa: BLE001 - not a safetensors file: not a dictionary
        return {}


def _from_file(name: str, path: Path) -> Source | None:
    meta = _header(path)
    kind = _FORMATS.get(meta.get("format", ""))
    if kind is None:
        return None
    try:
        cfg = json.loads(meta.get("config", "{}"))
    except json.JSONDecodeError:
        return None
    if kind == "sae":
        reads = (cfg.get("hook") or "?",)
        layers = 1
    else:
        layers = int(cfg.get("n_layers", 1))
        reads = tuple(cfg.get("reads") or ["?"] * layers)
    return Source(name, kind, layers, reads, cfg.get("d_sae"), str(path), path.stat().st_mtime_ns)


def _listed_files(root: Path, folder: Path, conf: dict) -> None:
    """A circuit-tracer config may list its layer files by path: each must be a .safetensors file in the data folder."""
    listed = conf.get("transcoders")
    if listed is None:
        return
    for p in listed if isinstance(listed, list) else []:
        if not isinstance(p, str):
            continue
        target = (folder / p).resolve()
        if not target.is_relative_to(root) or target.suffix != ".safetensors":
            raise I.BadInput(f"transcoder folder {folder.name!r} lists {p!r}, which is not a .safetensors file in the "
                             "data folder; only files under it can be read")


def _from_folder(name: str, root: Path, folder: Path) -> Source | None:
    import yaml

    cfg = folder / "config.yaml"
    if not cfg.is_file():
        return None
    try:
        conf = yaml.safe_load(cfg.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(conf, dict) or conf.get("model_kind") not in ("transcoder_set", "cross_layer_transcoder"):
        return None
    _listed_files(root, folder, conf)
    if isinstance(conf.get("transcoders"), list):
        layers = len(conf["transcoders"])
    else:
        layers = len(list(folder.glob("layer_*.safetensors"))) or len(list(folder.glob("W_enc_*.safetensors")))
    point = {"hook_resid_mid": "resid_mid"}.get(conf.get("feature_input_hook"), "mlp_in")
    mtime = max(p.stat().st_mtime_ns for p in folder.iterdir())
    return Source(name, "transcoder", layers, tuple(f"blocks.{l}.{point}" for l in range(layers)), None, str(folder),
                  mtime)


def _shipped_source(name: str, rec: dict) -> Source:
    """A shipped dictionary from its record: an SAE (``hook``) or a transcoder set (``structure``)."""
    if rec.get("kind") == "transcoders":
        st = rec["structure"]
        return Source(SHIPPED + name, "transcoder", len(st["layers"]),
                      tuple(f"blocks.{l}.{st['reads']}" for l in st["layers"]), st["width"], None)
    return Source(SHIPPED + name, "sae", 1, (rec["hook"],), rec.get("d_sae"), None)


def list_sources(state: Any, model_id: str | None, kinds: tuple[str, ...] = KINDS) -> list[Source]:
    """The dictionaries shipped for the model ``model_id`` (SAEs, transcoder sets), then the dictionaries in the
    data folder (files, then circuit-tracer folders), of the given kinds."""
    from ...dictionaries import shipped

    out = [src for src in (_shipped_source(name, shipped.info(name)) for name in shipped.available())
           if src.kind in kinds and shipped.info(src.name[len(SHIPPED):]).get("model_id") == model_id]
    if state.data_dir is None:
        return out
    root = state.data_dir.resolve()
    for name in I.list_data_files(state.data_dir):
        src = _from_file(name, root / name)
        if src is not None and src.kind in kinds:
            out.append(src)
    if "transcoder" in kinds:
        for cfg in sorted(root.rglob("config.yaml")):
            folder = cfg.parent
            if not folder.resolve().is_relative_to(root) or folder == root:
                continue
            try:
                src = _from_folder(folder.relative_to(root).as_posix(), root, folder)
            except I.BadInput:
                continue  # a folder leading out of the data folder is not offered
            if src is not None:
                out.append(src)
    return out


def resolve(state: Any, name: Any, model_id: str | None, kinds: tuple[str, ...] = KINDS,
            what: str = "dictionary") -> Source:
    """The dictionary ``name`` names, checked: a shipped SAE of this model, or a dictionary file / folder in
    the data folder of one of ``kinds``."""
    from ...dictionaries import shipped

    name = I.text(name, what, max_chars=300)
    if name.startswith(SHIPPED):
        ok = {s.name: s for s in list_sources(state, model_id, KINDS) if s.path is None}
        plural = " / ".join({"sae": "SAEs", "transcoder": "transcoders"}[k] for k in kinds)
        reads = "" if kinds == KINDS else f" (this page reads {plural})"
        if name not in ok:
            raise I.BadInput(f"{what} {name!r} is not a shipped SAE or transcoder set of this model; shipped for it: "
                             f"{list(ok) or 'none'}{reads}")
        if ok[name].kind not in kinds:
            raise I.BadInput(f"{what} {name!r} is {'an SAE' if ok[name].kind == 'sae' else 'a transcoder set'}; "
                             f"this page reads {plural}")
        return ok[name]
    path = I.data_file(state.data_dir, name, (".safetensors",), what=what, folders=True)
    root = state.data_dir.resolve()
    src = _from_folder(name, root, path) if path.is_dir() else _from_file(name, path)
    if src is None:
        raise I.BadInput(f"{what} {name!r} is not an avec SAE or transcoder file, nor a circuit-tracer transcoder "
                         "folder (config.yaml with model_kind)")
    if src.kind not in kinds:
        raise I.BadInput(f"{what} {name!r} is an {src.kind.upper() if src.kind == 'sae' else src.kind}; this page "
                         f"reads {' / '.join(kinds)}s")
    return src


def load(lm: Any, src: Source, memo: Any) -> Any:
    """The dictionary module of ``src`` in float32 (kept in ``memo``; runs on the model's worker thread)."""

    def make() -> Any:
        from ...dictionaries.circuit_tracer_io import load_circuit_tracer
        from ...dictionaries.sae import SAE
        from ...dictionaries.shipped import cast, load_shipped
        from ...dictionaries.transcoder import load_transcoder

        if src.path is None:
            return load_shipped(src.name[len(SHIPPED):])
        path = Path(src.path)
        if path.is_dir():
            return load_circuit_tracer(path, lm=lm).float()
        return cast(SAE.load(path), "float32").eval() if src.kind == "sae" else load_transcoder(path, dtype="float32")

    return memo.keep((src.name, src.path, src.mtime), make)


def at_of(src: Source, module: Any) -> str | None:
    """Where an SAE attaches (its config's hook); None for a transcoder (it records its own points)."""
    if src.kind != "sae":
        return None
    hook = getattr(getattr(module, "cfg", None), "hook", None)
    if not hook:
        raise I.BadInput(f"SAE {src.name!r} records no hook point in its config, so the page cannot tell where it "
                         "reads")
    return hook
