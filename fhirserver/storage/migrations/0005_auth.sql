-- The SMART on FHIR authorization server (docs/smart.md).
-- Secrets handed to clients (authorization codes, refresh tokens, client secrets, flow ids) are stored only
-- as SHA-256 digests: they are long random values, so a fast hash is enough and a database leak reveals none.
-- Changes that every server process must see at once (signing keys, revoked access tokens) NOTIFY the
-- channel `fhir_auth` with payload 'keys' or 'revoked <jti> <exp epoch>'.

CREATE TABLE auth_signing_key (
    kid          text        PRIMARY KEY,
    alg          text        NOT NULL DEFAULT 'RS256',
    private_pem  text        NOT NULL,
    public_jwk   jsonb       NOT NULL,
    created      timestamptz NOT NULL DEFAULT now(),
    retired      timestamptz,                 -- set when a newer key becomes current
    valid_until  timestamptz                  -- retired keys verify (and stay in JWKS) until then
);

CREATE TABLE auth_client (
    client_id      text        PRIMARY KEY,
    name           text        NOT NULL,
    kind           text        NOT NULL CHECK (kind IN ('public', 'confidential-symmetric',
                                                        'confidential-asymmetric')),
    secret_hash    text,                      -- confidential-symmetric only
    redirect_uris  text[]      NOT NULL DEFAULT '{}',
    scope          text        NOT NULL,      -- the scopes this client may be granted (space-separated)
    jwks           jsonb,                     -- confidential-asymmetric: registered public keys ...
    jwks_url       text,                      -- ... or where to fetch them
    launch_url     text,                      -- where `fhirserver launch` sends EHR launches
    created        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE auth_user (
    username       text        PRIMARY KEY,
    password_hash  text        NOT NULL,      -- Argon2id, PHC string
    role           text        NOT NULL CHECK (role IN ('admin', 'clinician', 'nurse', 'patient')),
    fhir_user      text,                      -- e.g. Practitioner/1, Patient/1
    totp_secret    text,                      -- base32; NULL: no second factor
    totp_last_step bigint,                    -- the last accepted TOTP time step (no replay)
    failed_logins  integer     NOT NULL DEFAULT 0,
    locked_until   timestamptz,
    created        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE auth_launch (
    id          text        PRIMARY KEY,      -- opaque launch id given to the app
    client_id   text        NOT NULL REFERENCES auth_client ON DELETE CASCADE,
    patient     text,
    encounter   text,
    username    text,
    expires_at  timestamptz NOT NULL
);

-- An authorization request in progress (authorize -> login -> patient -> consent), so any worker can continue it.
CREATE TABLE auth_request (
    id_hash       text        PRIMARY KEY,
    browser_hash  text        NOT NULL,       -- digest of the cookie that binds the flow to one browser
    client_id     text        NOT NULL REFERENCES auth_client ON DELETE CASCADE,
    params        jsonb       NOT NULL,       -- the validated authorize parameters and launch context
    username      text,                       -- set once the user has logged in
    patient       text,                       -- chosen or implied patient context
    expires_at    timestamptz NOT NULL
);

CREATE TABLE auth_code (
    code_hash       text        PRIMARY KEY,
    client_id       text        NOT NULL REFERENCES auth_client ON DELETE CASCADE,
    redirect_uri    text        NOT NULL,
    code_challenge  text        NOT NULL,
    grant_data      jsonb       NOT NULL,     -- scope, user, context: what the token response will carry
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz,
    issued          jsonb                     -- the access jti and refresh family issued (revoked on code reuse)
);

CREATE TABLE auth_refresh_token (
    token_hash  text        PRIMARY KEY,
    family      text        NOT NULL,         -- every rotation of one grant shares it
    client_id   text        NOT NULL REFERENCES auth_client ON DELETE CASCADE,
    username    text,
    grant_data  jsonb       NOT NULL,
    offline     boolean     NOT NULL,
    created     timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    rotated_at  timestamptz,                  -- used once already: presenting it again revokes the family
    revoked_at  timestamptz
);
CREATE INDEX auth_refresh_token_family ON auth_refresh_token (family);
CREATE INDEX auth_refresh_token_user ON auth_refresh_token (username) WHERE revoked_at IS NULL;

CREATE TABLE auth_revoked_token (
    jti         text        PRIMARY KEY,
    expires_at  timestamptz NOT NULL          -- after this the token is refused anyway: the row can go
);

CREATE TABLE auth_assertion_jti (
    client_id   text        NOT NULL,
    jti         text        NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (client_id, jti)
);

CREATE FUNCTION auth_notify_keys() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('fhir_auth', 'keys');
    RETURN NULL;
END
$$;
CREATE TRIGGER auth_signing_key_notify AFTER INSERT OR UPDATE OR DELETE ON auth_signing_key
    FOR EACH STATEMENT EXECUTE FUNCTION auth_notify_keys();

CREATE FUNCTION auth_notify_revoked() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('fhir_auth', 'revoked ' || NEW.jti || ' ' || floor(extract(epoch FROM NEW.expires_at))::bigint);
    RETURN NULL;
END
$$;
CREATE TRIGGER auth_revoked_token_notify AFTER INSERT ON auth_revoked_token
    FOR EACH ROW EXECUTE FUNCTION auth_notify_revoked();
