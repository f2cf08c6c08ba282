-- core.stores: Physical stores, outlets and online storefronts
-- Identifier fields: store_id
CREATE TABLE core.stores (
  store_id INTEGER NOT NULL, -- Surrogate key of the store or online channel
  store_name VARCHAR NOT NULL, -- Display name
  channel VARCHAR NOT NULL, -- Sales channel: retail, outlet or online
  region VARCHAR NOT NULL, -- Sales region: North, South, East, West or Online
  city VARCHAR, -- City of a physical store; NULL for online stores; values: 'Atlanta', 'Austin', 'Boston', 'Chicago', 'Dallas', 'Denver', 'Detroit', 'Miami', 'Minneapolis', 'New York', 'Philadelphia', 'Portland', 'San Francisco', 'Seattle', 'Toronto', 'Vancouver'
  country VARCHAR NOT NULL, -- ISO country code; values: 'CA', 'US'
  opened_on DATE NOT NULL, -- Opening date
  square_meters INTEGER -- Selling floor area; NULL for online stores
);
