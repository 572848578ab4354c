"""Reading images and CT volumes, and getting them ready for a model; nothing here knows about models.

One image: `io.read_image` (the one door from bytes, a stream or a path) sniffs the format (`formats`) and hands it to
the Pillow formats (`raster`) or to DICOM (`dicom`, header first and bounded), which share the pixel steps (`pixels`)
and end in a greyscale `Scan` (`scan`: the type, its limits, windows and every `ImageReadError`).
A CT series: `volumes.read_volume` takes a folder, files or a zip (`archives`, bounded before inflating), a DICOM
series (`series`) or NIfTI (`nifti`) to one canonical `Volume` in HU (`ct_volume`).
Then: the preprocessing contract a card stores (`preprocessing`), the lungs' box and classical HU mask (`lung_box`,
`lung_mask`), and the file name a person may see (`filenames`)."""
