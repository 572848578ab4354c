"""A DICOMweb PACS as a source of images and a place for results: query and retrieve (`client`), DICOM
Structured Reports of the tool's readings (`structured_report`), and the analysis of what a query found
(`screening`), shared by the Review page and scripts/pacs_screen.py."""
