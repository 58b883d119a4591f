"""Regenerate the bundled sample images used by `upocr demo` (run once; the JPEGs are committed).

    python src/upocr/samples/make_samples.py

Photos come from scikit-image's bundled data (public domain / CC0), fonts are the DejaVu fonts shipped
with matplotlib. Every sample is < 100 KB. The receipt has one "tampered" amount: re-typed in a slightly
different font, size and ink, pasted over the original, as tampered-text datasets do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import font_manager
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from skimage import data

HERE = Path(__file__).resolve().parent


def _font(family: str, size: int, weight: str = "normal") -> ImageFont.FreeTypeFont:
    path = font_manager.findfont(font_manager.FontProperties(family=family, weight=weight))
    return ImageFont.truetype(path, size)


def _save(image: Image.Image, name: str) -> None:
    path = HERE / name
    image.convert("RGB").save(path, quality=88, optimize=True)
    print(f"{path}  {image.size[0]}x{image.size[1]}  {path.stat().st_size / 1024:.0f} KB")


def cafe_sign() -> Image.Image:
    """A photo with a painted sign (scene text) on a board."""
    image = Image.fromarray(data.coffee())
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((330, 24, 588, 128), radius=10, fill=(28, 52, 40), outline=(230, 220, 190), width=3)
    draw.text((459, 58), "ESPRESSO", font=_font("DejaVu Serif", 38, "bold"), fill=(245, 232, 200), anchor="mm")
    draw.text((459, 102), "open daily 7-19", font=_font("DejaVu Sans", 22), fill=(230, 210, 160), anchor="mm")
    return image


def cat_caption() -> Image.Image:
    """A photo with a white, black-outlined caption (the 'meme' style of overlaid text)."""
    image = Image.fromarray(data.chelsea()).resize((480, 320), Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(image)
    font = _font("DejaVu Sans", 34, "bold")
    for y, line in ((36, "MONDAY AGAIN?"), (284, "need more coffee")):
        draw.text((240, y), line, font=font, fill="white", anchor="mm", stroke_width=3, stroke_fill="black")
    return image


def receipt() -> Image.Image:
    """A document-like page with printed lines; the TOTAL amount is tampered (pasted in another font)."""
    width, height = 420, 560
    rng = np.random.default_rng(7)
    paper = np.full((height, width, 3), (246, 243, 235), np.float32) + rng.normal(0, 3, (height, width, 1))
    image = Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    mono, ink = _font("DejaVu Sans Mono", 17), (35, 35, 45)
    draw.text((width // 2, 40), "CORNER BAKERY", font=_font("DejaVu Serif", 28, "bold"), fill=ink, anchor="mm")
    draw.text((width // 2, 72), "12 Mill Lane  -  Tel 0123 4567", font=_font("DejaVu Sans", 14), fill=ink, anchor="mm")
    items = [("Sourdough loaf", "4.20"), ("2 x Croissant", "3.60"), ("Rye rolls (6)", "5.10"),
             ("Cinnamon bun", "2.80"), ("Flat white", "3.10"), ("Apple tart", "4.40")]
    y = 120
    for name, price in items:
        draw.text((36, y), name, font=mono, fill=ink)
        draw.text((width - 36, y), price, font=mono, fill=ink, anchor="ra")
        y += 30
    draw.line((36, y + 6, width - 36, y + 6), fill=ink, width=2)
    y += 22
    draw.text((36, y), "TOTAL", font=_font("DejaVu Sans Mono", 20, "bold"), fill=ink)
    # The tampered amount: a patch of paper over the real one, re-typed in a near-miss font and ink.
    patch = Image.new("RGB", (110, 30), (247, 245, 238))
    ImageDraw.Draw(patch).text((108, 2), "93.20", font=_font("DejaVu Sans", 21, "bold"), fill=(20, 22, 60), anchor="ra")
    draw.text((width - 36, y), "23.20", font=_font("DejaVu Sans Mono", 20, "bold"), fill=ink, anchor="ra")
    image.paste(patch.filter(ImageFilter.GaussianBlur(0.4)), (width - 36 - 110, y - 2))
    y += 60
    for line in ("Card payment   **** 4411", "Thank you - see you soon!"):
        draw.text((width // 2, y), line, font=_font("DejaVu Sans", 15), fill=ink, anchor="mm")
        y += 26
    return image.rotate(1.2, resample=Image.Resampling.BICUBIC, fillcolor=(120, 110, 100))


def poster() -> Image.Image:
    """A photo with a large headline and a small footer (two text scales)."""
    image = Image.fromarray(data.astronaut()).resize((448, 448), Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(image)
    draw.text((224, 400), "MISSION 2024", font=_font("DejaVu Sans", 44, "bold"), fill=(255, 210, 40), anchor="mm",
              stroke_width=2, stroke_fill=(20, 20, 20))
    draw.text((224, 436), "launch window opens at dawn", font=_font("DejaVu Sans", 16), fill="white", anchor="mm")
    return image


if __name__ == "__main__":
    _save(cafe_sign(), "cafe_sign.jpg")
    _save(cat_caption(), "cat_caption.jpg")
    _save(receipt(), "receipt.jpg")
    _save(poster(), "poster.jpg")
    # Two real photographs of real text, as shipped with scikit-image (no text added).
    _save(Image.fromarray(data.page()), "real_book_page.jpg")
    _save(Image.fromarray(data.text()), "real_handwriting.jpg")
