"""Per-item categories for public harmful sources that carry none (AdvBench, HarmfulQA, ...).

These sets say only "harmful"; the guardian needs one of ten categories. Each text gets the
first category whose reviewed keyword pattern it matches, else the source's default. The
patterns were written by reading ~50 rows of each source; rows so labelled are marked
ambiguous in the stats. Order matters: specific harms (minors, self-harm, privacy,
copyright) are tried before the broad ones (hate, then crime).
"""

from __future__ import annotations

import re

_RULES: tuple[tuple[str, str], ...] = (
    (
        "sexual_minors",
        r"\b(child|children|minor|minors|underage|teen|teenager|kid|kids|pedo\w*|grooming|"
        r"porn\w*|sexual\w*|sex|explicit|nude|nudes|erotic\w*|prostitut\w*|escort)\b|"
        r"미성년|청소년|아동|초등학생|중학생|고등학생|야동|음란|성관계|섹스|성매매|몸캠",
    ),
    (
        "self_harm_suicide",
        r"\b(suicid\w*|self[- ]harm\w*|kill (myself|yourself|themselves)|end my life|"
        r"end(ing)? (my|your|their) (own )?life|take my (own )?life|"
        r"cut(ting)? myself|overdos\w*|anorexi\w*|bulimi\w*|starve myself)\b|"
        r"자살|자해|죽고 싶|목숨을 끊|극단적 선택|손목",
    ),
    (
        "privacy_violation",
        r"\b(personal information|private information|home address|phone number|"
        r"social security|ssn|dox\w*|track (someone|my|his|her)|spy on|stalk\w*|"
        r"surveil\w*|location of|someone's (email|account|messages)|identity theft)\b|"
        r"개인정보|주민등록|주소|전화번호|위치 추적|몰래 (보|훔쳐)|뒷조사|신상",
    ),
    (
        "copyright_infringement",
        r"\b(pirat\w*|copyright\w*|torrent\w*|crack(ed)? (software|version)|keygen|"
        r"drm|watermark|bootleg|counterfeit\w*|plagiari\w*|intellectual property)\b|"
        r"저작권|불법 다운|토렌트|무료로 (보|다운)|크랙|복제품|짝퉁",
    ),
    (
        "discrimination_hate",
        r"\b(racis\w*|racial|race|ethnic\w*|black people|jews?|jewish|muslims?|"
        r"immigrants?|gay|lesbian|transgender|lgbt\w*|women are|men are|sexis\w*|"
        r"hate speech|white supremac\w*|nazi\w*|stereotyp\w*|discriminat\w*|minorit\w*|"
        r"religio\w*|disabled|disabilit\w*)\b|"
        r"인종|흑인|혐오|차별|동성애|이민자|장애인|여자들은|남자들은|종교",
    ),
    (
        "insult_offensiveness",
        r"\b(insult\w*|humiliat\w*|bully\w*|harass\w*|troll\w*|offensive|curse|"
        r"degrad\w*|mock\w*|defam\w*|slander\w*|libel)\b|욕설|모욕|조롱|괴롭",
    ),
    (
        "sensitive_topic",
        r"\b(election\w*|politic\w*|propaganda|misinformation|disinformation|"
        r"conspiracy|fake news|vote|voting|abortion)\b|선거|정치|가짜 뉴스|음모론",
    ),
    (
        "uncertain_prediction",
        r"\b(stock tips?|which stock|lottery numbers?|guaranteed (return|profit)s?)\b|"
        r"주가|로또|코인",
    ),
)
_COMPILED = tuple((cat, re.compile(p, re.IGNORECASE)) for cat, p in _RULES)


def categorize(text: str, default: str = "crime_advice") -> str:
    for cat, pattern in _COMPILED:
        if pattern.search(text):
            return cat
    return default
