"""The model floor: the interfaces every part above builds on (models/core: attention, model
families, devices) and the families themselves, one folder each (models/var: VAR; models/default:
the small VAR shipped with litevar). Installed as litevar.models; it imports nothing above it."""
