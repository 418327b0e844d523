-- The audit trail (docs/audit.md): one row per AuditEvent, append-only, chained by hashes.
--
-- * `audit_event` keeps each AuditEvent whole (`body`) next to the columns its searches use. Like the search
--   index tables (0007), it lives in `fhirserver_index`, where the server's role has no privileges, behind a
--   view of the same name that shows only the session's tenant and accepts only its rows: array containment
--   (`patient @> ...`) is not LEAKPROOF, so under a row-level policy its GIN indexes could not be used.
-- * Rows are never changed: triggers refuse UPDATE, DELETE and TRUNCATE for everyone, the owner included,
--   and the server's role is granted only SELECT and INSERT (fhirserver/storage/roles.py).
-- * The chain (`audit_link`) is written after commit by the linker (fhirserver/storage/audit_chain.py):
--   link n = sha256(link n-1 || sha256(the event row as jsonb text)), in the order the linker took the rows.
--   It takes only rows whose inserting transaction is older than every running one (`xid` below the snapshot
--   xmin), so no row commits behind it; `audit_chain_head` is where it stopped (in (xid, seq) order).

CREATE SEQUENCE audit_event_seq;

CREATE TABLE fhirserver_index.audit_event (
    tenant_id  text        NOT NULL DEFAULT current_setting('fhirserver.tenant', true),
    seq        bigint      NOT NULL DEFAULT nextval('audit_event_seq'),
    xid        xid8        NOT NULL DEFAULT pg_current_xact_id(),
    id         text        NOT NULL,          -- AuditEvent.id
    recorded   timestamptz NOT NULL,          -- AuditEvent.recorded
    type       text        NOT NULL,          -- 'system|code' of AuditEvent.type
    subtype    text[]      NOT NULL,          -- 'system|code' of each AuditEvent.subtype
    action     text,                          -- C R U D E
    outcome    text,                          -- 0 4 8 12
    patient    text[]      NOT NULL,          -- 'Patient/id' of every patient the event concerns
    entity     text[]      NOT NULL,          -- 'Type/id' of every entity.what (without _history; absolute
                                              -- URLs, of other servers, kept whole)
    agent      text[]      NOT NULL,          -- 'Type/id' of every agent.who reference
    altid      text[]      NOT NULL,          -- agent.altId (user names, client ids), lower-cased
    address    text[]      NOT NULL,          -- agent.network.address
    body       jsonb       NOT NULL,
    PRIMARY KEY (seq)
);
CREATE UNIQUE INDEX audit_event_id ON fhirserver_index.audit_event (tenant_id, id);
CREATE INDEX audit_event_recorded ON fhirserver_index.audit_event (tenant_id, recorded, seq);
CREATE INDEX audit_event_xid ON fhirserver_index.audit_event (tenant_id, xid, seq);
CREATE INDEX audit_event_patient ON fhirserver_index.audit_event USING gin (patient);
CREATE INDEX audit_event_entity ON fhirserver_index.audit_event USING gin (entity);
CREATE INDEX audit_event_agent ON fhirserver_index.audit_event USING gin (agent);
CREATE INDEX audit_event_altid ON fhirserver_index.audit_event USING gin (altid);

CREATE VIEW public.audit_event AS SELECT * FROM fhirserver_index.audit_event
    WHERE tenant_id = current_setting('fhirserver.tenant', true) WITH LOCAL CHECK OPTION;
ALTER VIEW public.audit_event ALTER COLUMN tenant_id SET DEFAULT current_setting('fhirserver.tenant', true);
ALTER VIEW public.audit_event ALTER COLUMN seq SET DEFAULT nextval('audit_event_seq');
ALTER VIEW public.audit_event ALTER COLUMN xid SET DEFAULT pg_current_xact_id();

CREATE TABLE audit_link (
    tenant_id  text   NOT NULL DEFAULT current_setting('fhirserver.tenant', true),
    position   bigint NOT NULL,               -- 1, 2, 3 ... per tenant
    seq        bigint NOT NULL,               -- the audit_event row linked
    hash       bytea  NOT NULL,
    PRIMARY KEY (tenant_id, position)
);
CREATE INDEX audit_link_seq ON audit_link (tenant_id, seq);

CREATE TABLE audit_chain_head (
    tenant_id  text   NOT NULL DEFAULT current_setting('fhirserver.tenant', true) PRIMARY KEY,
    position   bigint NOT NULL DEFAULT 0,
    hash       bytea  NOT NULL DEFAULT '\x'::bytea,
    last_xid   xid8   NOT NULL DEFAULT '0'::xid8,  -- the last row linked, in (xid, seq) order
    last_seq   bigint NOT NULL DEFAULT 0
);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['audit_link', 'audit_chain_head'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (tenant_id = current_setting(%L, true))',
                       t, 'fhirserver.tenant');
    END LOOP;
END
$$;

CREATE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only: % on % is refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_event_append_only BEFORE UPDATE OR DELETE ON fhirserver_index.audit_event
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON fhirserver_index.audit_event
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_link_append_only BEFORE UPDATE OR DELETE ON audit_link
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_link_no_truncate BEFORE TRUNCATE ON audit_link
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
