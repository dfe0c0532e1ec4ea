-- Replicas hold every client in memory (no database read per client
-- login) and re-read them when this counter moves: any change to a client,
-- however it is made (the CLI, or SQL by hand), moves it.
CREATE TABLE directory_version (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO directory_version (id, version) VALUES (1, 0);

CREATE TRIGGER clients_inserted AFTER INSERT ON clients
BEGIN
    UPDATE directory_version SET version = version + 1 WHERE id = 1;
END;
CREATE TRIGGER clients_updated AFTER UPDATE ON clients
BEGIN
    UPDATE directory_version SET version = version + 1 WHERE id = 1;
END;
CREATE TRIGGER clients_deleted AFTER DELETE ON clients
BEGIN
    UPDATE directory_version SET version = version + 1 WHERE id = 1;
END;
