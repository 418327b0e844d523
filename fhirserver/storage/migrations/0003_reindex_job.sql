-- Reindex jobs: rebuild search-index rows of stored resources (after custom SearchParameters change).
-- A job walks resources in (res_type, res_id) order and records how far it got after every batch,
-- so an interrupted job resumes where it stopped.
CREATE TABLE reindex_job (
    id           bigserial PRIMARY KEY,
    res_types    text[]      NOT NULL,          -- empty: every type
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    last_type    text,
    last_id      text,
    done         bigint      NOT NULL DEFAULT 0
);
