-- The metadata server's registry, schema version 1 (upgrade-to-v*.sql
-- files bring it up to date).
CREATE TABLE version (version INTEGER NOT NULL);

-- Counters that survive restarts (the next assigned peer number).
CREATE TABLE counters (
  name TEXT PRIMARY KEY,
  value INTEGER NOT NULL
);

-- Every peer in the network, in join order.
CREATE TABLE peers (
  name TEXT PRIMARY KEY,
  host TEXT NOT NULL,
  port INTEGER NOT NULL,
  max_neighbours INTEGER NOT NULL,
  joined INTEGER NOT NULL,            -- join order
  placed INTEGER NOT NULL DEFAULT 0   -- 1 once in the overlay (root or linked)
);

-- Each peer's own neighbour list, in the order it made the links.
CREATE TABLE neighbours (
  peer TEXT NOT NULL REFERENCES peers(name) ON DELETE CASCADE,
  position INTEGER NOT NULL,
  neighbour TEXT NOT NULL,
  PRIMARY KEY (peer, position)
);
