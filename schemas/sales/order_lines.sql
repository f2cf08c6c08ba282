-- sales.order_lines: One row per product line of an order
-- Partitioned by: bucket[16](order_id)
-- Identifier fields: order_id, line_number
-- Join: order_id = sales.orders.order_id
-- Join: product_id = core.products.product_id
CREATE TABLE sales.order_lines (
  order_id BIGINT NOT NULL, -- Order this line belongs to; references sales.orders.order_id
  line_number INTEGER NOT NULL, -- Position of the line within the order, from 1
  product_id BIGINT NOT NULL, -- Product sold; references core.products.product_id
  quantity INTEGER NOT NULL, -- Units sold
  unit_price DECIMAL(10,2) NOT NULL, -- Price of one unit at the time of sale, before discount, USD
  discount_amount DECIMAL(10,2) NOT NULL -- Total discount on the line (all units), USD
);
