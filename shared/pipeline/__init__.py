"""The export's stages, one module each, named as `functions/` names them, plus the run's
source and working files that the stages share."""
