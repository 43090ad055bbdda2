"""Deterministic medical-style rows for the embedded default (`builtin:tiny-medical`).

Why: the real dataset lives on the hub, which is out of reach offline. These rows use the dataset's
schema (Question, Complex_CoT, Response) plus MedQA-style `options`/`answer_idx`, and every answer
follows from the findings named in the question, so a tiny model visibly learns the mapping and the
`<think>` format in about a minute. Pure Python: no torch, no randomness outside `random.Random(seed)`.
"""

from __future__ import annotations

import random

# condition -> (findings, the physiology that links them, a discriminating test)
CONDITIONS: dict[str, tuple[list[str], str, str]] = {
    "iron deficiency anemia": (
        ["fatigue", "spoon-shaped nails", "a low ferritin", "pica for ice"],
        "chronic blood loss depletes iron stores and limits hemoglobin synthesis",
        "serum ferritin",
    ),
    "vitamin B12 deficiency": (
        ["numbness in both feet", "a macrocytic anemia", "a smooth red tongue", "loss of vibration sense"],
        "impaired DNA synthesis and demyelination follow low cobalamin",
        "serum methylmalonic acid",
    ),
    "hypothyroidism": (
        ["cold intolerance", "weight gain", "constipation", "dry coarse skin"],
        "low thyroid hormone slows the basal metabolic rate",
        "TSH",
    ),
    "Graves disease": (
        ["heat intolerance", "weight loss despite a good appetite", "a fine tremor", "bulging eyes"],
        "stimulating antibodies drive excess thyroid hormone",
        "TSH receptor antibodies",
    ),
    "myocardial infarction": (
        ["crushing chest pain radiating to the left arm", "ST elevation", "diaphoresis", "a raised troponin"],
        "an occluded coronary artery starves the myocardium",
        "serial troponin",
    ),
    "pulmonary embolism": (
        ["sudden shortness of breath", "pleuritic chest pain", "a recent long-haul flight", "a swollen calf"],
        "a venous clot travels to the pulmonary arteries",
        "CT pulmonary angiography",
    ),
    "acute appendicitis": (
        ["right lower quadrant pain", "rebound tenderness", "pain that began around the navel", "loss of appetite"],
        "an obstructed appendix becomes inflamed",
        "abdominal ultrasound",
    ),
    "acute pancreatitis": (
        ["epigastric pain radiating to the back", "an elevated lipase", "heavy alcohol use", "vomiting"],
        "activated enzymes digest the pancreas",
        "serum lipase",
    ),
    "migraine": (
        ["a unilateral throbbing headache", "a visual aura", "nausea with the headache", "relief in a dark room"],
        "cortical spreading depression activates trigeminal pain pathways",
        "a headache diary",
    ),
    "bacterial meningitis": (
        ["neck stiffness", "high fever", "a positive Kernig sign", "confusion"],
        "bacteria inflame the meninges",
        "lumbar puncture",
    ),
    "asthma": (
        ["episodic wheezing", "a nocturnal cough", "symptoms triggered by cold air", "reversible airflow obstruction"],
        "airway hyperreactivity narrows the bronchi",
        "spirometry with bronchodilator",
    ),
    "gout": (
        ["sudden pain in the big toe", "a red swollen joint", "needle-shaped crystals", "a high uric acid"],
        "urate crystals deposit in the joint",
        "joint aspiration",
    ),
    "kidney stones": (
        ["colicky flank pain", "blood in the urine", "pain radiating to the groin", "restlessness with the pain"],
        "a stone obstructs the ureter",
        "non-contrast CT",
    ),
    "Cushing syndrome": (
        ["central obesity", "purple abdominal striae", "a round moon face", "easy bruising"],
        "excess cortisol remodels fat and thins the skin",
        "late-night salivary cortisol",
    ),
    "Addison disease": (
        ["darkening of the skin", "low blood pressure", "a low sodium", "salt craving"],
        "the adrenal cortex fails to make cortisol and aldosterone",
        "ACTH stimulation test",
    ),
    "celiac disease": (
        ["chronic diarrhea after eating bread", "tissue transglutaminase antibodies", "bloating", "an itchy blistering rash"],
        "gluten triggers immune damage to the small bowel villi",
        "duodenal biopsy",
    ),
    "Parkinson disease": (
        ["a resting tremor", "slow movements", "cogwheel rigidity", "a shuffling gait"],
        "dopaminergic neurons of the substantia nigra are lost",
        "a levodopa trial",
    ),
    "type 1 diabetes": (
        ["frequent urination", "constant thirst", "ketones in the urine", "a high blood glucose"],
        "autoimmune destruction of beta cells leaves no insulin",
        "HbA1c",
    ),
}

_SEXES = ["man", "woman"]
_SETTINGS = ["clinic", "emergency department", "primary care office", "urgent care center"]
_EXTRAS = [
    "Vital signs are otherwise unremarkable.",
    "She has no known drug allergies.",
    "He takes no regular medication.",
    "Family history is non-contributory.",
    "The symptoms started two weeks ago.",
    "There is no recent travel abroad.",
]
LETTERS = "ABCDE"


def make_row(rng: random.Random) -> dict:
    """One row in the dataset's schema, with a MedQA-style multiple-choice item."""
    diagnosis = rng.choice(sorted(CONDITIONS))
    findings, mechanism, test = CONDITIONS[diagnosis]
    first, second = rng.sample(findings, 2)
    age = rng.randint(18, 85)
    sex = rng.choice(_SEXES)
    setting = rng.choice(_SETTINGS)
    extra = rng.choice(_EXTRAS)
    question = (
        f"A {age}-year-old {sex} comes to the {setting} with {first} and {second}. {extra} "
        "What is the most likely diagnosis?"
    )
    cot = (
        f"The key findings are {first} and {second}. "
        f"Together, {first} and {second} point to {diagnosis}, because {mechanism}. "
        f"The other findings do not change this. The best confirming test is {test}."
    )
    response = f"The most likely diagnosis is {diagnosis}. Confirm it with {test}."
    distractors = rng.sample([c for c in sorted(CONDITIONS) if c != diagnosis], len(LETTERS) - 1)
    choices = distractors + [diagnosis]
    rng.shuffle(choices)
    options = dict(zip(LETTERS, choices))
    answer_idx = LETTERS[choices.index(diagnosis)]
    return {
        "Question": question,
        "Complex_CoT": cot,
        "Response": response,
        "question": question,
        "options": options,
        "answer_idx": answer_idx,
        "answer": diagnosis,
    }


def generate(n_rows: int = 800, seed: int = 0) -> list[dict]:
    """`n_rows` rows; the same arguments always give the same rows."""
    rng = random.Random(seed)
    return [make_row(rng) for _ in range(n_rows)]


def corpus(rows: list[dict]) -> list[str]:
    """The text a tokenizer for these rows should be trained on."""
    texts = []
    for row in rows:
        texts += [row["Question"], row["Complex_CoT"], row["Response"], " ".join(row["options"].values())]
    return texts
