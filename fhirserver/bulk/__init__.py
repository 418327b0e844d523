"""Bulk Data $export (FHIR Bulk Data Access IG 2.0), framework-free: kick-off parameters, planning a job
into parts, the worker that writes NDJSON files, the completion manifest, and file expiry.
All SQL lives in fhirserver.storage.export; the HTTP handlers in fhirserver.rest.export."""
