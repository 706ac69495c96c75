"""The words of the questions: label phrases, answer options, and what the Zoom part of a reasoning says was seen."""

from __future__ import annotations

# Labels asked about with location questions (which lung, which lobe).
SIDED = {"Lung nodule", "Consolidation", "Pleural effusion", "Atelectasis", "Lung opacity"}
SIZE_OPTIONS = ["small (<5 mm)", "medium (5–10 mm)", "large (>10 mm)"]
COUNT_OPTIONS = ["1", "2", "3 or more"]
# What the box of a positive shows (Zoom part of the reasoning); others say "an abnormal density".
SEEN = {
    "Lung nodule": "a small round soft-tissue density within aerated lung",
    "Pleural effusion": "fluid density layering in the dependent pleural space",
    "Consolidation": "a large homogeneous area of parenchymal opacification",
    "Cardiomegaly": "an enlarged cardiac silhouette",
    "Arterial wall calcification": "bright calcific foci along the aortic wall",
    "Coronary artery wall calcification": "bright calcific foci along the coronary course",
    "Emphysema": "patchy areas of very low attenuation",
}
# What an anatomy box of a negative shows, by region ("lung", "heart").
NORMAL = {
    "lung": "uniformly aerated parenchyma without focal abnormality",
    "heart": "a normal-sized heart without calcific foci",
}
# What a decoy box of a negative shows (Zoom part of the reasoning); others say "no <label>".
ABSENT = {
    "Lung nodule": "aerated lung parenchyma without a nodule",
    "Pleural effusion": "aerated lung reaching the pleura without fluid",
    "Consolidation": "aerated lung parenchyma without opacification",
    "Emphysema": "lung parenchyma of normal attenuation without low-density areas",
    "Cardiomegaly": "a normal-sized cardiac silhouette",
    "Pericardial effusion": "a normal pericardium without fluid",
    "Arterial wall calcification": "mediastinal soft tissue and vessel wall without calcific foci",
    "Coronary artery wall calcification": "mediastinal soft tissue and heart border without calcific foci",
}


def phrase(label: str) -> str:
    """``label`` as it reads in "Is there <phrase> in this CT slice?" ("a lung nodule", "emphysema")."""
    return {"Lung nodule": "a lung nodule", "Pleural effusion": "a pleural effusion"}.get(label, label.lower())


def seen(label: str) -> str:
    """What the box of a positive of ``label`` shows."""
    return SEEN.get(label, "an abnormal density")


def absent(label: str) -> str:
    """What a box of a negative of ``label`` shows."""
    return ABSENT.get(label, "no " + label.lower())
