"""Training and evaluating the shipped models: data tables and patient-level splits (`data`), the epoch loop both
trainers share (`loop`), the classifier trainer (`classifier`), the segmentation trainer (`segmentation`), a
classifier's evaluation report (`evaluation`) and a lesion segmenter's false positives (`infection_false_positives`)."""
