-- core.products: Product catalogue, one row per SKU
-- Partitioned by: identity(category)
-- Identifier fields: product_id
CREATE TABLE core.products (
  product_id BIGINT NOT NULL, -- Surrogate key of the product
  sku VARCHAR NOT NULL, -- Stock keeping unit code, unique per product
  product_name VARCHAR NOT NULL, -- Display name
  category VARCHAR NOT NULL, -- Top-level category: Apparel, Home, Electronics, Beauty, Sports or Grocery
  subcategory VARCHAR NOT NULL, -- Subcategory within the category
  brand VARCHAR NOT NULL, -- Brand name; values: 'Acme', 'Brightline', 'Harbor & Co', 'Kestrel', 'Lumen', 'Northwind', 'Oakridge', 'Pinecrest', 'Solstice', 'Summit', 'Tidal', 'Vela'
  unit_cost DECIMAL(10,2) NOT NULL, -- Cost of one unit to the company, USD
  list_price DECIMAL(10,2) NOT NULL, -- Current list price of one unit, USD
  launched_on DATE NOT NULL, -- Date the product was first sold
  is_active BOOLEAN NOT NULL, -- False once the product is discontinued
  tags VARCHAR[] -- Merchandising tags such as new, bestseller, eco, clearance
);
