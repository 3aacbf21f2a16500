"""Is a lexicon name, where it stands, a supplement product taken? (guidelines §1)

A dictionary finds nutrient words everywhere in clinical text, and the guidelines exclude
most of them by context: lab values and tests ("B12 412", "iron studies", "folate normal"),
deficiencies and toxicities, dietary intake and foods ("cranberry juice", "cooks with
garlic", "rich in vitamin K"), anything given intravenously or in TPN, topicals and
aromatherapy ("biotin shampoo", "lavender essential oil diffuser"), descriptions of a
product's contents ("label lists zinc"), and nutrient words inside other terms ("calcium
oxalate stones", "iodine contrast", "B6-containing", "potassium-based salt substitute").

The patterns below were written from those rules and checked on the training corpus only.
They decide on the name's immediate neighbourhood, so they are cheap and explainable, and
they are shared by every backend (the rules' dictionary, the models' lexicon floors and
the models' own supplement mentions, see :mod:`extraction.rules`).
"""

from __future__ import annotations

import re

# Right after the name: what the name is part of, or that it is a measured value.
_AFTER = re.compile(
    r"^(?:"
    # deficiency, level, test and intake words ("iron sat", "B12 and folate levels")
    r"\s*(?:deficien\w*|insufficien\w*|toxicity|intake|stores|overload|def\b|load\b|"
    r"absorption|status|panel|labs?\b|levels?\b|studies|sat\b|saturation|"
    r"normal\b|wnl\b|replete\b|within\s+normal)"
    r"|(?:\s*(?:,|and|&)\s*[\w-]+){1,3}\s+(?:levels|studies|sent|checked)\b"
    r"|\s*(?:,|and)\s*(?:TSH|CBC|CMP|MMA|ferritin|homocysteine)\b"
    # a lab value: a comparison, or a decimal without a dose unit ("folate >20", "Mg 1.2
    # this AM", "Calcium 7.9 post-op"; not "melatonin 0.5-1 mg", "omega-3 2.5 grams")
    r"|\s*(?::|=|was|is|of)?\s*(?:[<>]\s*\d"
    r"|\d+\.\d+(?!\d|\s*(?:-\s*\d|to\s+\d|mg|mcg|g\b|gm|grams?|iu|units?|ml|meq|k\b|"
    r"billion|%|tab|cap|softgel|gumm|drop|scoop|tsp|tbsp)))"
    r"|\s*25-?OH\b"
    # foods and drinks, topicals, and words the name is only part of
    r"|\s*(?:ale\b|lattes?|candy|candies|sprouts|smoothies?|cereal|bar\b|shampoo|"
    r"serum\b|cream|lotion|body\s+(?:products|wash)|essential\s+oil|oil\s+(?:on|to)\b|"
    r"diffuser|contrast|oxalate|sucrose|acetate\s+(?:per|as|with|for)|-?fortified|"
    r"salt\s+substitute)"
    r"|-(?:induced|based|rich|free|deficient|responsive)"
    r"|\s*-?\s*rich\b"
    r")",
    re.IGNORECASE,
)
# A lab value written as a whole number ("B12 412,") needs a lab beside it: unit-less doses
# ("magnesium 400; calcium 600") look the same.
_INTEGER_VALUE = re.compile(
    r"^\s*(?::|=|was|is|of)?\s*\d+(?=\s*(?:[;)]|,(?!\d)|$|-\s|\s-|\s+(?:this|today|post|pre|"
    r"on\s+admission|yesterday|elevated|low|high|normal|and\s)))",
    re.IGNORECASE,
)
_LAB_NEARBY = re.compile(
    r"\b(?:labs?|levels?|screen\w*|TSH|ferritin|MMA|CBC|CMP|BMP|A1c|TSAT|Hgb|INR|panel)\b"
)
# "IV" the route, not a stage, grade or class ("stage IV CKD"), and not the other IV
# treatments beside a supplement taken by mouth ("IV fluids", "IV antibiotics").
_IV = (
    r"(?<!stage )(?<!grade )(?<!class )(?<!type )(?-i:\bIV)"
    r"(?!\s+(?:antibiotic|abx|fluid|access|line|contrast))"
)
# Before the name, adjacent: a test, a route or a dietary source.
_BEFORE_ADJACENT = re.compile(
    rf"(?:{_IV}|intravenous|infusion|\b25-?OH|\bcheck|\bdietary|\bserum|\blow|\bhigh|"
    r"\btopical|\bhigh\s+in|\brich\s+in|\blots\s+of|\bcooks\s+with|\bfrom\s+diet)\s*$",
    re.IGNORECASE,
)
# Before the name, in the same clause: it is infused, or named as an ingredient.
_BEFORE_CLAUSE = re.compile(
    rf"(?:\bTPN\b|banana\s+bag|{_IV}\b|\bIVPB\b|\blabel\s+lists\b|\bformula\s+with\b|"
    r"\bcooks?\s+with\b|\bcooking\b|\bapplies\b|\bapply\b)[^;.:()]{0,40}$",
    re.IGNORECASE,
)
# After the name, in the same clause: it is given intravenously, infused or applied.
_AFTER_CLAUSE = re.compile(
    r"^(?:(?!\b(?:and|or|plus)\b)[^;,()]){0,25}?"  # no other product in between
    rf"(?:{_IV}|\bIVPB|\bintravenous\w*|\binfus\w*|\b"
    r"topically|in\s+(?:her|his|the)\s+(?:cooking|food|diet)|added\s+to\s+(?:the\s+)?bag)\b",
    re.IGNORECASE,
)

# A drink is a food ("cranberry juice"), except where the juice is the product sold as a
# supplement (aloe vera and noni juice; guidelines §1 foods, training corpus).
_JUICE = re.compile(r"^\s*juice\b", re.IGNORECASE)
_JUICE_PRODUCTS = re.compile(r"^(?:aloe|noni)", re.IGNORECASE)

# A change of product or route between the cue and the name ends the cue's reach
# ("thiamine 500 mg IV x3 days, then thiamine 100 mg by mouth").
_HANDOVER = re.compile(
    r"\b(?:then|to|switch\w*|transition\w*|by\s+mouth|PO|oral\w*|tak\w+|resum\w*|"
    r"continu\w*|home)\b",
    re.IGNORECASE,
)


# Every pattern looks at most ~60 characters away: a window keeps the cost per name
# constant in long notes.
_REACH = 120


def is_product(text: str, start: int, end: int) -> bool:
    """Whether the lexicon name at ``text[start:end]`` is a supplement product taken."""
    before, after = text[max(0, start - _REACH) : start], text[end : end + _REACH]
    return not (
        _AFTER.match(after)
        or (_JUICE.match(after) and not _JUICE_PRODUCTS.match(text[start:end]))
        or (_INTEGER_VALUE.match(after) and _LAB_NEARBY.search(before + after))
        or _BEFORE_ADJACENT.search(before)
        or _in_clause(_BEFORE_CLAUSE.search(before))
        or _in_clause(_AFTER_CLAUSE.match(after))
    )


def _in_clause(cue: re.Match[str] | None) -> bool:
    """A clause cue holds unless the text between it and the name hands over to another
    product or route."""
    return cue is not None and not _HANDOVER.search(cue.group(0))
