-- sales.orders: One row per customer order (header)
-- Partitioned by: month(ordered_at)
-- Identifier fields: order_id
-- Join: customer_id = core.customers.customer_id
-- Join: promotion_id = marketing.promotions.promotion_id
-- Join: store_id = core.stores.store_id
CREATE TABLE sales.orders (
  order_id BIGINT NOT NULL, -- Surrogate key of the order
  customer_id BIGINT NOT NULL, -- Customer who placed the order; references core.customers.customer_id
  store_id INTEGER NOT NULL, -- Store or online channel that took the order; references core.stores.store_id
  promotion_id INTEGER, -- Promotion applied to the order, NULL when none; references marketing.promotions.promotion_id
  ordered_at TIMESTAMPTZ NOT NULL, -- When the order was placed (UTC)
  status VARCHAR NOT NULL, -- Order status: completed, cancelled or pending. Only completed orders count as sales
  payment_method VARCHAR NOT NULL, -- card, paypal, gift_card or cash
  shipping_amount DECIMAL(10,2) NOT NULL -- Shipping charged to the customer, USD (0 in stores)
);
