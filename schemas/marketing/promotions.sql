-- marketing.promotions: Discount promotions and their validity windows
-- Partitioned by: day(starts_on)
-- Identifier fields: promotion_id
CREATE TABLE marketing.promotions (
  promotion_id INTEGER NOT NULL, -- Surrogate key of the promotion
  promo_code VARCHAR NOT NULL, -- Code customers enter at checkout
  promotion_name VARCHAR NOT NULL, -- Marketing name
  discount_pct DECIMAL(5,2) NOT NULL, -- Percentage taken off the line price, e.g. 15.00
  starts_on DATE NOT NULL, -- First day the promotion is valid
  ends_on DATE NOT NULL, -- Last day the promotion is valid (inclusive)
  channel VARCHAR NOT NULL, -- Where it applies: all, online or retail
  budget DECIMAL(12,2) NOT NULL -- Planned marketing budget, USD
);
