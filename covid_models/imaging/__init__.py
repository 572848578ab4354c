"""Reading images and CT volumes, and getting them ready for a model: files and bytes to a greyscale `Scan` (`io`)
or a CT `Volume` in HU (`volumes`), the preprocessing contract a card stores (`preprocessing`), the lungs' box and
mask (`lung_box`, `lung_mask`), and the file name a person may see (`filenames`). Nothing here knows about models."""
