"""What the tool says about an image or a scan, computed once for every door: the analysis of an image
(`image_analysis`) and of a CT scan (`scan_analysis`, led by the quantitative reading in HU of `ct_quantitative`),
the checks before any verdict (`image_checks`, `lung_plausibility`), the class activation maps (`explain`), and how a
result is drawn and written (`overlays`, `scan_views`, `figures`, `report`)."""
