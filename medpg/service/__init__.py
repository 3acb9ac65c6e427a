"""medpg as an HTTP service: the FastAPI application (``app``), FHIR R4 DocumentReference (``fhir``)."""
