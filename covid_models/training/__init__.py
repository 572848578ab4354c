"""Training and evaluating the shipped models: which data folder is read (`data_folders`), data tables
(`manifests`), patient-level splits and the leakage check (`splits`), torch datasets (`datasets`), the epoch loop both
trainers share (`loop`), the classifier trainer (`classifier`), the segmentation trainer (`segmentation`), a
classifier's evaluation report (`evaluation`) and a lesion segmenter's false positives (`infection_false_positives`)."""
