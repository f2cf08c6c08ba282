-- sales.returns: One row per returned order line
-- Partitioned by: month(returned_at)
-- Identifier fields: return_id
-- Join: line_number = sales.order_lines.line_number
-- Join: order_id = sales.orders.order_id
-- Join: product_id = core.products.product_id
CREATE TABLE sales.returns (
  return_id BIGINT NOT NULL, -- Surrogate key of the return
  order_id BIGINT NOT NULL, -- Order the returned line belongs to; references sales.orders.order_id
  line_number INTEGER NOT NULL, -- Returned order line; with order_id references sales.order_lines
  product_id BIGINT NOT NULL, -- Product returned; references core.products.product_id
  returned_at TIMESTAMPTZ NOT NULL, -- When the return was received (UTC)
  quantity INTEGER NOT NULL, -- Units returned
  refund_amount DECIMAL(10,2) NOT NULL, -- Amount refunded to the customer, USD
  reason VARCHAR NOT NULL -- damaged, wrong_size, not_as_described, changed_mind or late_delivery
);
