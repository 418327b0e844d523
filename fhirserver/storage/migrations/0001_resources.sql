-- Versioned FHIR resources.
-- `resource` holds the current version of every (type, id), `resource_history` every version
-- ever written (the current one included), so reads touch one narrow table and history one other.
-- `txid` is a global, monotonically increasing write sequence: it orders system history and
-- feeds paging cursors, `_since` and (later) bulk export.

CREATE SEQUENCE resource_txid_seq AS bigint;

CREATE TABLE resource_history (
    txid          bigint      NOT NULL,
    res_type      text        NOT NULL,
    res_id        text        NOT NULL,
    version       integer     NOT NULL,
    last_updated  timestamptz NOT NULL,
    method        text        NOT NULL CHECK (method IN ('POST', 'PUT', 'PATCH', 'DELETE')),
    body          jsonb,                      -- NULL for a delete
    PRIMARY KEY (res_type, res_id, version)
);
CREATE UNIQUE INDEX resource_history_txid ON resource_history (txid);
CREATE INDEX resource_history_type_txid ON resource_history (res_type, txid);
CREATE INDEX resource_history_updated ON resource_history (last_updated);

CREATE TABLE resource (
    res_type      text        NOT NULL,
    res_id        text        NOT NULL,
    version       integer     NOT NULL,
    last_updated  timestamptz NOT NULL,
    txid          bigint      NOT NULL,
    deleted       boolean     NOT NULL DEFAULT false,
    body          jsonb,                      -- NULL when deleted
    PRIMARY KEY (res_type, res_id)
);

-- Conditional create/update/delete on `identifier` until the search index lands (issue 3).
CREATE INDEX resource_identifier ON resource USING gin ((body -> 'identifier') jsonb_path_ops)
    WHERE NOT deleted;
