"""The napari plugin (`pip install 'emseg-rt[napari]'`): a dock widget "Segment organelles" and the phantom as
sample data, declared to napari by the npe2 manifest `napari.yaml` beside this file.

    run.py     what a run does, without Qt: an image layer's data through the runtime's array API
               (`segment_labels`, or a `SegmentRequest` run by `run_segment` when it writes OME-Zarr or
               instances), the class names and the OME-Zarr label colours of the result
    widget.py  the dock widget (magicgui): choices, a napari thread worker, a progress bar fed by the one progress
               reporter (`SegmentRequest.on_progress`), Cancel, Labels layers, one-line notifications
    sample.py  File > Open Sample > emseg-rt: a synthetic beta-cell phantom with its ground truth

A user interface like the CLI (the top floor): it calls the library, never the CLI.
"""
