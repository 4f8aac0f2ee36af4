"""The notebook front end: magics, %flux commands, rendering, live progress, grids and the panel."""
