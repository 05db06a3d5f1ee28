-- The store's clock with an offset that only munja's tests move (src/store/clock.rs): the
-- session setting munja.clock_offset_ms, in milliseconds, unset (zero) in every munja process.
-- Both functions stay simple SQL expressions, so the planner inlines them into each statement.

CREATE FUNCTION munja_clock_offset() RETURNS INTERVAL
    LANGUAGE sql STABLE
    AS $$ SELECT COALESCE(NULLIF(current_setting('munja.clock_offset_ms', true), '')::BIGINT, 0)
                 * INTERVAL '1 millisecond' $$;

CREATE OR REPLACE FUNCTION munja_now() RETURNS TIMESTAMPTZ
    LANGUAGE sql STABLE
    AS $$ SELECT date_trunc('milliseconds', now() + munja_clock_offset()) $$;

-- The clock read at the moment of the call (not at the start of the transaction), as the rate
-- budget needs: a taker that waited on a bucket's row lock refills from when it got the row.
CREATE FUNCTION munja_clock_now() RETURNS TIMESTAMPTZ
    LANGUAGE sql VOLATILE
    AS $$ SELECT clock_timestamp() + munja_clock_offset() $$;
