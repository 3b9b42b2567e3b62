"""The DICOM gateway: check every image on its way into the archive (see docs/gateway.md)."""
