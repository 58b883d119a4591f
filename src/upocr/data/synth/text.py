"""Words to draw: sign, shop and document vocabulary in several scripts, plus numbers and codes.

Latin (English, German, French, Spanish with their accents), Greek and Cyrillic: scripts that need no
shaping engine, so every word renders the same with PIL's basic layout on any machine. v2 scenes add
Chinese, Japanese, Korean (no shaping needed), Thai and Arabic (shaped with libraqm) where a font of the
`synth-fonts` extra covers them (`choose_script_v2`).
"""

from __future__ import annotations

import numpy as np

_ENGLISH = """
open closed sale exit entrance push pull welcome coffee tea bakery fresh daily menu hotel station street
road avenue park parking free stop caution danger private office store market pharmacy bank taxi bus
train airport city center north south east west floor room door gate toilet information service price
total cash card receipt invoice date time order number name address phone email website delivery pizza
burger chicken rice noodles soup salad bread cake milk water juice beer wine special offer discount new
best quality since family restaurant kitchen garden house school library museum theatre cinema music
shop books news today tomorrow monday friday sunday morning evening hours only please thank you keep
clear no smoking entry staff emergency fire police hospital clinic doctor dental beauty salon hair nails
fashion shoes bags sports outdoor electronics mobile repair computer print copy studio gallery art design
london paris berlin tokyo river lake hill bridge tower square market village national public royal
summer winter spring autumn festival concert tickets event live show love life happy good great big
small super fast easy safe green blue red black white gold silver star sun moon light power energy
"""
_GERMAN = "Straße Bäckerei Öffnungszeiten Ausgang Eingang Kühlschrank Grüße Müller Brötchen Geschäft Größe"
_FRENCH = "café boulangerie fermé ouvert entrée sortie hôtel théâtre élève garçon déjà très crème pâtisserie"
_SPANISH = "niño señor mañana año calle farmacia panadería salida entrada abierto cerrado más café España"
_GREEK = "ΚΑΦΕ ταβέρνα έξοδος είσοδος φαρμακείο ξενοδοχείο ΑΘΗΝΑ καλημέρα ψωμί θάλασσα οδός ΣΤΑΣΗ"
_CYRILLIC = "МАГАЗИН аптека выход вход гостиница улица хлеб молоко кафе МОСКВА открыто закрыто почта"

_CHINESE = "出口 入口 营业时间 欢迎光临 停车场 禁止吸烟 超市 药店 银行 餐厅 咖啡 北京 上海 地铁站 公交车站 洗手间 电话 价格 优惠 新品 大学 图书馆 医院 酒店 免费"
_JAPANESE = "出口 入口 営業中 東京 駅 コーヒー ラーメン 寿司 いらっしゃいませ 禁煙 お手洗い 駐車場 本日 特売 新宿 薬局 銀行 ありがとう 定食 喫茶店"
_KOREAN = "출구 입구 영업중 서울 커피 식당 약국 은행 화장실 주차장 금연 할인 환영합니다 지하철 버스 정류장 병원 학교 편의점 감사합니다"
_THAI = "ทางออก ทางเข้า ร้านอาหาร กาแฟ โรงแรม ธนาคาร ห้องน้ำ ตลาด กรุงเทพ ยินดีต้อนรับ ลดราคา เปิด ปิด สถานี โรงเรียน ขอบคุณ"
_ARABIC = "مخرج مدخل مطعم قهوة فندق صيدلية بنك مستشفى سوق مرحبا مفتوح مغلق شارع محطة مدرسة شكرا القاهرة دبي"

_SCRIPTS: dict[str, list[str]] = {
    "english": _ENGLISH.split(),
    "latin-accents": (_GERMAN + " " + _FRENCH + " " + _SPANISH).split(),
    "greek": _GREEK.split(),
    "cyrillic": _CYRILLIC.split(),
    "chinese": _CHINESE.split(),
    "japanese": _JAPANESE.split(),
    "korean": _KOREAN.split(),
    "thai": _THAI.split(),
    "arabic": _ARABIC.split(),
}
# v2: the v1 mix, plus the scripts users ask for (drawn only where an installed font covers them).
_SCRIPT_WEIGHTS_V2 = {"english": 0.52, "latin-accents": 0.1, "greek": 0.04, "cyrillic": 0.06, "chinese": 0.08,
                      "japanese": 0.05, "korean": 0.06, "thai": 0.045, "arabic": 0.045}
# How often each vocabulary is chosen for a text block (English-heavy like the real benchmarks).
_SCRIPT_WEIGHTS = {"english": 0.7, "latin-accents": 0.14, "greek": 0.08, "cyrillic": 0.08}


def choose_script(rng: np.random.Generator) -> str:
    names = list(_SCRIPT_WEIGHTS)
    return names[int(rng.choice(len(names), p=list(_SCRIPT_WEIGHTS.values())))]


def vocabulary(script: str) -> list[str]:
    return _SCRIPTS[script]


def choose_script_v2(rng: np.random.Generator, drawable) -> str:
    """A script by the v2 weights among those `drawable(script)` accepts (English always is)."""
    names = [name for name in _SCRIPT_WEIGHTS_V2 if name == "english" or drawable(name)]
    weights = np.array([_SCRIPT_WEIGHTS_V2[name] for name in names])
    return names[int(rng.choice(len(names), p=weights / weights.sum()))]


def _number_token(rng: np.random.Generator) -> str:
    kind = int(rng.integers(5))
    if kind == 0:
        return f"${rng.integers(1, 999)}.{rng.integers(0, 100):02d}"
    if kind == 1:
        return f"{rng.integers(1, 31):02d}/{rng.integers(1, 13):02d}/{rng.integers(1990, 2030)}"
    if kind == 2:
        return f"{rng.integers(100, 999)}-{rng.integers(1000, 9999)}"
    if kind == 3:
        return f"{rng.integers(1, 100)}%"
    return str(int(rng.integers(1, 10000)))


def random_word(rng: np.random.Generator, script: str) -> str:
    """One word of `script`, cased like signs and documents; now and then a number or code."""
    if script == "english" and rng.random() < 0.12:
        return _number_token(rng)
    words = _SCRIPTS[script]
    word = words[int(rng.integers(len(words)))]
    case = rng.random()
    if case < 0.3:
        return word.upper()
    if case < 0.6:
        return word[:1].upper() + word[1:]
    return word


def similar_word(rng: np.random.Generator, script: str, original: str, tries: int = 20) -> str:
    """A different word of about the same length, cased like `original` (what a forger types)."""
    best = original
    for _ in range(tries):
        candidate = random_word(rng, script)
        if candidate.lower() == original.lower():
            continue
        if original.isupper():
            candidate = candidate.upper()
        elif original[:1].isupper():
            candidate = candidate[:1].upper() + candidate[1:]
        else:
            candidate = candidate.lower()
        if abs(len(candidate) - len(original)) <= max(1, len(original) // 3):
            return candidate
        best = candidate
    return best
