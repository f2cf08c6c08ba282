-- core.fiscal_calendar: One row per calendar day with the retail fiscal calendar
-- Identifier fields: calendar_date
CREATE TABLE core.fiscal_calendar (
  calendar_date DATE NOT NULL, -- Calendar day
  fiscal_year INTEGER NOT NULL, -- Fiscal year; it starts on 1 February and is named for the calendar year it ends in (FY2025 = 2024-02-01..2025-01-31)
  fiscal_quarter INTEGER NOT NULL, -- Fiscal quarter 1-4 (Q1 = February-April)
  fiscal_month INTEGER NOT NULL, -- Fiscal month 1-12 (1 = February)
  fiscal_week INTEGER NOT NULL, -- Week of the fiscal year, 1-53, counted from 1 February
  day_of_week VARCHAR NOT NULL, -- English day name, Monday..Sunday; values: 'Friday', 'Monday', 'Saturday', 'Sunday', 'Thursday', 'Tuesday', 'Wednesday'
  is_weekend BOOLEAN NOT NULL, -- Saturday or Sunday
  is_holiday BOOLEAN NOT NULL, -- A company-observed holiday
  holiday_name VARCHAR -- Name of the holiday; NULL on other days; values: 'Christmas Day', 'Christmas Eve', 'Independence Day', 'New Year''s Day', 'New Year''s Eve', 'Veterans Day'
);
