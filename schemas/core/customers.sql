-- core.customers: One row per registered customer
-- Partitioned by: bucket[8](customer_id)
-- Identifier fields: customer_id
CREATE TABLE core.customers (
  customer_id BIGINT NOT NULL, -- Surrogate key of the customer
  first_name VARCHAR, -- Given name
  last_name VARCHAR, -- Family name
  email VARCHAR, -- Contact email; NULL when the customer opted out of sharing it
  segment VARCHAR NOT NULL, -- Customer segment: consumer, small_business or enterprise
  loyalty_tier VARCHAR NOT NULL, -- Loyalty programme tier: none, silver, gold or platinum
  signup_date DATE NOT NULL, -- Date the customer created an account
  birth_date DATE, -- Date of birth; NULL when not provided
  address STRUCT(street VARCHAR, city VARCHAR, postal_code VARCHAR, country VARCHAR), -- Billing address (street: Street and number; city: City; postal_code: Postal code; country: ISO country code)
  created_at TIMESTAMPTZ NOT NULL -- When the customer record was created (UTC)
);
