-- Multi-tenancy (docs/tenants.md). PostgreSQL, not only the server's SQL, keeps tenants apart:
--
-- * Every tenant-owned row carries `tenant_id`, taken by default from the session setting `fhirserver.tenant`.
--   With no tenant set the setting is NULL or '': nothing is visible and nothing can be written (fail closed).
-- * Resources, history, jobs and the authorization server's tables: row-level security. A policy shows and
--   accepts only rows of the session's tenant; FORCE makes it apply to the table owner too (superusers and
--   BYPASSRLS roles still bypass it: the server connects as `fhirserver_app`, which is neither).
-- * The seven search-index tables: moved to the schema `fhirserver_index`, where the server's role has no
--   privileges, and reached through views of the same names that show only the session's tenant and accept
--   only its rows (WITH CHECK OPTION). Not row-level security, on purpose: under a policy PostgreSQL may use
--   an index for a condition only if every function in it is LEAKPROOF, and the index conditions of searches
--   (left(), numeric comparisons, LIKE) are not, so every search would scan its index table sequentially.
--   A plain view's filter is planned like any other condition.
-- Ids are unique per tenant: primary keys of resources, history, clients and users include `tenant_id`
-- (last: lookups always give type and id, and the policy or view adds the tenant as one more condition).

CREATE TABLE tenant (
    id       text        PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    hosts    text[]      NOT NULL DEFAULT '{}',     -- host names that reach this tenant without /t/{id}
    created  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO tenant (id) VALUES ('default');

CREATE SCHEMA fhirserver_index;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['resource', 'resource_history', 'reindex_job', 'export_checkpoint', 'export_job',
                             'export_part', 'auth_client', 'auth_user', 'auth_launch', 'auth_request', 'auth_code',
                             'auth_refresh_token', 'auth_assertion_jti', 'search_token', 'search_string',
                             'search_date', 'search_number', 'search_quantity', 'search_reference', 'search_uri']
    LOOP
        -- existing rows belong to the default tenant; new rows to the tenant of the session
        EXECUTE format('ALTER TABLE %I ADD COLUMN tenant_id text NOT NULL DEFAULT %L', t, 'default');
        EXECUTE format('ALTER TABLE %I ALTER COLUMN tenant_id SET DEFAULT current_setting(%L, true)',
                       t, 'fhirserver.tenant');
        IF t LIKE 'search\_%' THEN
            EXECUTE format('ALTER TABLE %I SET SCHEMA fhirserver_index', t);
            EXECUTE format('CREATE VIEW public.%I AS SELECT * FROM fhirserver_index.%I'
                           ' WHERE tenant_id = current_setting(%L, true) WITH LOCAL CHECK OPTION',
                           t, t, 'fhirserver.tenant');
            EXECUTE format('ALTER VIEW public.%I ALTER COLUMN tenant_id SET DEFAULT current_setting(%L, true)',
                           t, 'fhirserver.tenant');
        ELSE
            EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY', t);
            EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (tenant_id = current_setting(%L, true))',
                           t, 'fhirserver.tenant');
        END IF;
    END LOOP;
END
$$;

ALTER TABLE resource DROP CONSTRAINT resource_pkey, ADD PRIMARY KEY (res_type, res_id, tenant_id);
ALTER TABLE resource_history DROP CONSTRAINT resource_history_pkey,
    ADD PRIMARY KEY (res_type, res_id, version, tenant_id);
ALTER TABLE export_checkpoint DROP CONSTRAINT export_checkpoint_pkey, ADD PRIMARY KEY (transaction_time, tenant_id);
ALTER TABLE auth_user DROP CONSTRAINT auth_user_pkey, ADD PRIMARY KEY (username, tenant_id);
ALTER TABLE auth_assertion_jti DROP CONSTRAINT auth_assertion_jti_pkey, ADD PRIMARY KEY (client_id, jti, tenant_id);

ALTER TABLE auth_launch DROP CONSTRAINT auth_launch_client_id_fkey;
ALTER TABLE auth_request DROP CONSTRAINT auth_request_client_id_fkey;
ALTER TABLE auth_code DROP CONSTRAINT auth_code_client_id_fkey;
ALTER TABLE auth_refresh_token DROP CONSTRAINT auth_refresh_token_client_id_fkey;
ALTER TABLE auth_client DROP CONSTRAINT auth_client_pkey, ADD PRIMARY KEY (client_id, tenant_id);
ALTER TABLE auth_launch ADD FOREIGN KEY (client_id, tenant_id) REFERENCES auth_client ON DELETE CASCADE;
ALTER TABLE auth_request ADD FOREIGN KEY (client_id, tenant_id) REFERENCES auth_client ON DELETE CASCADE;
ALTER TABLE auth_code ADD FOREIGN KEY (client_id, tenant_id) REFERENCES auth_client ON DELETE CASCADE;
ALTER TABLE auth_refresh_token ADD FOREIGN KEY (client_id, tenant_id) REFERENCES auth_client ON DELETE CASCADE;
