-- The setting each route serves, shared by the replicas on one store: a replica that changes its
-- route's setting (fallback, promotion, an operator) writes it here; the others adopt the newest.
CREATE TABLE route_state (
    route TEXT PRIMARY KEY,
    active BIGINT NOT NULL,
    policy TEXT NOT NULL,
    updated_ms BIGINT NOT NULL
);
