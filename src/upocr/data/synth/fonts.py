"""Font catalogue for the synthetic data, split into DISJOINT train and test families.

Fonts come only from installable packages, so set-up needs no root and every machine with the same
packages renders the same bytes: the fonts shipped inside matplotlib (always present) and the small
PyPI font packages `font-roboto`, `font-source-sans-pro`, `font-source-serif-pro`, `font-caladea`,
`font-fredoka-one`, `font-amatic-sc`, `font-hanken-grotesk`, `font-intuitive`, `font-manrope`
(optional: a missing package just narrows the choice; the set used is recorded in the manifest).
System fonts are deliberately not used: they differ between machines and would break determinism.

Partition by *family* (a test family never appears in training, in any weight):

  train: DejaVu Sans, DejaVu Sans Mono, STIX General (matplotlib); Roboto, Source Sans Pro,
         Manrope, Fredoka One, Amatic SC (PyPI)
  test:  DejaVu Serif (matplotlib); Source Serif Pro, Caladea, Hanken Grotesk, Intuitive (PyPI)

Both splits hold sans, serif-like and hand-drawn/display styles, so the test split measures
generalisation to unseen typefaces rather than to an unseen *kind* of typeface.

v2 scenes (`--scenes v2`) add the optional extra `upocr[synth-fonts]` (all SIL OFL 1.1, found by
file, never imported or downloaded at run time): handwriting Caveat (train) / Kalam (test), Thai
Noto Sans Thai (train) / Sarabun (test), Arabic Noto Sans Arabic (train) / Amiri (test), and Noto Sans
CJK JP (Chinese, Japanese and Korean glyphs; train only: no second CJK family fits the size budget, so
the test split has no CJK/Korean text). v1 scenes never use them, so v1 bytes do not depend on them.
Thai and Arabic need shaping (libraqm in PIL); without it those scripts are not drawn.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from PIL import ImageFont

SPLITS = ("train", "test")


@dataclass(frozen=True)
class FontSpec:
    """One font file: `family` groups weights (for 'near' fonts when tampering), `style` is the kind."""

    family: str
    path: str
    style: str  # sans | serif | mono | hand | display
    split: str


# (package or "matplotlib", file name, family, style, split)
_CATALOGUE: tuple[tuple[str, str, str, str, str], ...] = (
    *(("matplotlib", f, "DejaVu Sans", "sans", "train") for f in (
        "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf")),
    *(("matplotlib", f, "DejaVu Sans Mono", "mono", "train") for f in (
        "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf")),
    *(("matplotlib", f, "STIX General", "serif", "train") for f in (
        "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf")),
    *(("font_roboto", f"Roboto-{w}.ttf", "Roboto", "sans", "train") for w in (
        "Regular", "Bold", "Black", "Light", "Medium", "Italic", "BoldItalic", "Thin")),
    *(("font_source_sans_pro", f"SourceSansPro-{w}.ttf", "Source Sans Pro", "sans", "train") for w in (
        "Regular", "Bold", "Black", "Light", "Semibold", "It")),
    *(("font_manrope", f"Manrope-{w}.ttf", "Manrope", "sans", "train") for w in (
        "Regular", "Bold", "ExtraBold", "Light")),
    ("font_fredoka_one", "FredokaOne-Regular.ttf", "Fredoka One", "display", "train"),
    *(("font_amatic_sc", f"AmaticSC-{w}.ttf", "Amatic SC", "hand", "train") for w in ("Regular", "Bold")),
    *(("matplotlib", f, "DejaVu Serif", "serif", "test") for f in (
        "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf")),
    *(("font_source_serif_pro", f"SourceSerifPro-{w}.ttf", "Source Serif Pro", "serif", "test") for w in (
        "Regular", "Bold", "Black", "Semibold", "It")),
    *(("font_caladea", f"Caladea-{w}.ttf", "Caladea", "serif", "test") for w in (
        "Regular", "Bold", "Italic", "BoldItalic")),
    *(("font_hanken_grotesk", f"HankenGrotesk-{w}.otf", "Hanken Grotesk", "sans", "test") for w in (
        "Regular", "Bold", "Light", "SemiBold", "Italic")),
    ("font_intuitive", "Intuitive.ttf", "Intuitive", "hand", "test"),
)
# Fonts only v2 scenes use (the optional extra `synth-fonts`); same columns.
_CATALOGUE_V2: tuple[tuple[str, str, str, str, str], ...] = (
    ("fontpkg_caveat", "Caveat[wght].ttf", "Caveat", "hand", "train"),
    ("fontpkg_noto_sans_thai", "NotoSansThai[wdth,wght].ttf", "Noto Sans Thai", "sans", "train"),
    ("fontpkg_noto_sans_arabic", "NotoSansArabic[wdth,wght].ttf", "Noto Sans Arabic", "sans", "train"),
    ("noto_cjk_sans_jp_regular", "NotoSansCJKjp-Regular.otf", "Noto Sans CJK", "sans", "train"),
    *(("fontpkg_kalam", f"Kalam-{w}.ttf", "Kalam", "hand", "test") for w in ("Regular", "Bold", "Light")),
    *(("fontpkg_sarabun", f"Sarabun-{w}.ttf", "Sarabun", "sans", "test") for w in ("Regular", "Bold", "Light")),
    *(("fontpkg_amiri", f"Amiri-{w}.ttf", "Amiri", "serif", "test") for w in ("Regular", "Bold")),
)
# Families whose script needs a shaping engine (joining, mark placement): laid out with libraqm.
SHAPED_FAMILIES = frozenset({"Noto Sans Thai", "Noto Sans Arabic", "Sarabun", "Amiri"})


def _package_font_dir(package: str) -> Path | None:
    """Folder holding a font package's files, found without importing (executing) the package."""
    if package == "matplotlib":
        spec = importlib.util.find_spec("matplotlib")
        return Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" if spec and spec.origin else None
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0])
    # font-* packages keep their files in files/, noto-cjk-* next to __init__.py.
    return folder / "files" if (folder / "files").is_dir() else folder


def raqm_available() -> bool:
    from PIL import features

    return bool(features.check("raqm"))


@functools.lru_cache(maxsize=None)
def fonts_for_split(split: str, v2: bool = False) -> tuple[FontSpec, ...]:
    """The installed fonts of one split, in catalogue order (stable, so choices are deterministic);
    `v2` adds the installed fonts of the `synth-fonts` extra (shaped ones only with libraqm)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    found = []
    catalogue = _CATALOGUE + _CATALOGUE_V2 if v2 else _CATALOGUE
    for package, name, family, style, font_split in catalogue:
        if family in SHAPED_FAMILIES and not raqm_available():
            continue
        if font_split != split:
            continue
        folder = _package_font_dir(package)
        if folder is not None and (folder / name).is_file():
            found.append(FontSpec(family=family, path=str(folder / name), style=style, split=split))
    if not found:
        raise RuntimeError(f"no fonts found for split {split!r} (is matplotlib installed?)")
    return tuple(found)


@functools.lru_cache(maxsize=None)
def font_codepoints(path: str) -> frozenset[int]:
    """Code points a font maps to glyphs (so words are only drawn with fonts that cover them)."""
    from fontTools.ttLib import TTFont  # matplotlib's dependency; loaded lazily

    with TTFont(path, lazy=True) as font:
        return frozenset(font.getBestCmap() or {})


def covers(font: FontSpec, text: str) -> bool:
    points = font_codepoints(font.path)
    return all(ord(ch) in points for ch in text if not ch.isspace())


@functools.lru_cache(maxsize=None)
def _shaped_paths() -> frozenset[str]:
    return frozenset(str(_package_font_dir(package) / name) for package, name, family, _, _ in _CATALOGUE_V2
                     if family in SHAPED_FAMILIES and _package_font_dir(package) is not None)


@functools.lru_cache(maxsize=512)
def load_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    # Basic layout: identical glyph placement whether or not libraqm is installed (determinism); only
    # the Thai/Arabic fonts (never listed without libraqm) need shaping to be legible.
    layout = ImageFont.Layout.RAQM if path in _shaped_paths() else ImageFont.Layout.BASIC
    return ImageFont.truetype(path, size=size, layout_engine=layout)


def near_fonts(font: FontSpec) -> list[FontSpec]:
    """Fonts a forger would pick to imitate `font`: other weights of its family, else the same style."""
    pool = fonts_for_split(font.split)
    if font not in pool:  # a v2-only font (handwriting, Thai, Arabic, CJK)
        pool = fonts_for_split(font.split, True)
    same_family = [f for f in pool if f.family == font.family and f.path != font.path]
    return same_family or [f for f in pool if f.style == font.style and f.path != font.path] or [font]


BOLD_WEIGHTS = ("Bold", "Bol.", "Black", "ExtraBold", "Semibold", "SemiBold")  # in file names ("Bol.": STIX)
SLANTED = ("Ita", "It.", "Obl")  # italic and oblique file names


def bold_fonts(font: FontSpec) -> list[FontSpec]:
    """Upright bold weights of `font`'s family (empty when it has none): headings and totals."""
    pool = fonts_for_split(font.split, True)
    names = {f.path: Path(f.path).name for f in pool if f.family == font.family and f.path != font.path}
    return [f for f in pool if f.path in names and any(w in names[f.path] for w in BOLD_WEIGHTS)
            and not any(slant in names[f.path] for slant in SLANTED)]


def installed_font_names(v2: bool = False) -> dict[str, list[str]]:
    """Per split, the font files in use (recorded in the manifest: bytes depend on this set)."""
    return {split: [Path(f.path).name for f in fonts_for_split(split, v2)] for split in SPLITS}


@functools.lru_cache(maxsize=None)
def fonts_for_script(split: str, script: str) -> tuple[FontSpec, ...]:
    """v2 fonts of `split` that cover every word of `script`'s vocabulary (empty: script not drawable)."""
    from upocr.data.synth import text

    sample = "".join(text.vocabulary(script))
    return tuple(f for f in fonts_for_split(split, True) if covers(f, sample))
