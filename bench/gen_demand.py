#!/usr/bin/env python3
"""Deterministic demand-like data: half-hourly load of several regions, driven by weather.

The shape of a utility's meter table, in the long format `sequifier preprocess` reads:

    timestamp,region,demand_gw,temperature_c,is_workday
    2023-01-01 00:00:00,Nord-Öst,4.8123,-1.93,0

* `regions` regions (text ids, one with non-ASCII letters), each with its own size,
  climate (mean temperature, annual and daily swing) and heating / cooling sensitivity.
* 30-minute steps over `days` days (default 420, more than a year) from 2023-01-01.
* temperature: annual cycle + daily cycle + weather anomalies that persist for days
  (an AR(1) on the half-hour scale with a 2-day memory) + a regional share of a
  national anomaly; the recorded `temperature_c` adds its own measurement noise.
* demand: a daily profile (night trough, morning and evening peaks) that differs between
  workdays and days off, a weekly factor (Saturday, Sunday lower), a slow trend, holidays
  (national days off: demand of a Sunday on a weekday), and a weather part that is
  non-linear: heating below ~14 C (power 1.4) and cooling above ~22 C (power 1.6), on the
  building temperature (the air temperature smoothed over ~6 hours: thermal inertia),
  plus a load noise of its own that persists for hours (AR(1)) and white meter noise.
* missing readings: short outages of a few hours whose demand cells are empty, single
  empty temperature cells, and a few rows absent altogether (a meter that sent nothing).

Nothing is made easy on purpose: the weather part is a fifth of the load in winter and
changes from day to day, so "same half-hour yesterday" is a strong baseline that misses
weather changes and holidays, and "last value" misses the daily shape.

usage: gen_demand.py OUT.csv [--regions R] [--days D] [--seed S]
"""

import argparse

import numpy as np

STEPS_PER_DAY = 48
START = np.datetime64("2023-01-01T00:00:00")
REGION_NAMES = ["Nord-Öst", "south_coast", "West Valley", "centre", "highlands", "harbour-7"]


def daily_profile(half_hour: np.ndarray, workday: np.ndarray) -> np.ndarray:
    """Relative load by half-hour: a night trough, a morning ramp and an evening peak;
    days off start later and have a flatter midday."""
    h = half_hour / 2.0
    night = -0.28 * np.exp(-0.5 * ((h - 3.5) / 2.2) ** 2)
    morning = np.where(workday, 0.16, 0.07) * np.exp(-0.5 * ((h - np.where(workday, 8.0, 10.5)) / 1.6) ** 2)
    midday = np.where(workday, 0.10, 0.05) * np.exp(-0.5 * ((h - 13.0) / 3.0) ** 2)
    evening = 0.20 * np.exp(-0.5 * ((h - 18.5) / 1.8) ** 2)
    return 1.0 + night + morning + midday + evening


def generate(n_regions=4, days=420, seed=7):
    rng = np.random.default_rng(seed)
    n = days * STEPS_PER_DAY
    step = np.arange(n)
    day = step // STEPS_PER_DAY
    half_hour = step % STEPS_PER_DAY
    weekday = (day + 6) % 7  # 2023-01-01 is a Sunday; 0 = Monday
    day_of_year = day % 365
    # national holidays: fixed dates plus a few moving ones drawn per seed
    holidays = {0, 364, 359, 360, 120, 226}
    holidays |= {int(d) for d in rng.choice(np.arange(30, 350), 5, replace=False)}
    holiday = np.isin(day_of_year, sorted(holidays))
    workday = (weekday < 5) & ~holiday

    # a national weather anomaly shared by the regions (fronts cross the country)
    national = _ar1(rng, n, phi=1 - 1 / (2 * STEPS_PER_DAY), sd=3.2)
    rows = []
    for r in range(n_regions):
        name = REGION_NAMES[r % len(REGION_NAMES)] + ("" if r < len(REGION_NAMES) else f"-{r}")
        size = rng.uniform(2.0, 9.0)
        mean_temp = rng.uniform(7.0, 15.0)
        annual = rng.uniform(7.0, 11.0)
        diurnal = rng.uniform(2.5, 5.0)
        share = rng.uniform(0.6, 0.85)
        local = _ar1(rng, n, phi=1 - 1 / (1.5 * STEPS_PER_DAY), sd=2.2)
        true_temp = (mean_temp - annual * np.cos(2 * np.pi * (day_of_year - 15) / 365)
                     + diurnal * np.sin(2 * np.pi * (half_hour / 2.0 - 9.0) / 24.0)
                     + share * national + (1 - share) * local)
        building = _smooth(true_temp, halflife=12)  # ~6 hours of thermal inertia
        heating = rng.uniform(0.010, 0.016) * np.maximum(0.0, 14.0 - building) ** 1.4
        cooling = rng.uniform(0.006, 0.012) * np.maximum(0.0, building - 22.0) ** 1.6
        weekly = np.select([weekday == 5, weekday == 6], [0.93, 0.88], 1.0)
        weekly = np.where(holiday, 0.87, weekly)
        trend = 1.0 + 0.03 * step / n
        profile = daily_profile(half_hour, workday)
        load_noise = _ar1(rng, n, phi=0.97, sd=0.025)
        demand = size * trend * (profile * weekly * (1.0 + load_noise) + heating + cooling)
        demand = demand * (1.0 + rng.normal(0.0, 0.008, n))
        recorded_temp = true_temp + rng.normal(0.0, 0.6, n)

        demand_text = np.char.mod("%.4f", demand).astype(object)
        temp_text = np.char.mod("%.2f", recorded_temp).astype(object)
        # outages: a few hours of empty demand cells, ~0.4% of the readings
        for start in rng.choice(n - 12, max(1, n // 2500), replace=False):
            demand_text[start:start + rng.integers(1, 9)] = ""
        temp_text[rng.random(n) < 0.003] = ""
        keep = rng.random(n) >= 0.0007  # rows a meter never sent
        keep[:STEPS_PER_DAY] = True
        times = (START + step.astype("timedelta64[m]") * 30).astype(str)
        times = np.char.replace(times, "T", " ")
        rows.append((name, times[keep], demand_text[keep], temp_text[keep],
                     workday[keep].astype(np.int64)))
    return rows


def _ar1(rng, n, phi, sd):
    """An AR(1) series of stationary standard deviation `sd`."""
    shocks = rng.normal(0.0, sd * np.sqrt(1 - phi ** 2), n)
    return _recursion(shocks, phi, rng.normal(0.0, sd))


def _smooth(values, halflife):
    """Exponential smoothing with this half-life in steps."""
    phi = 0.5 ** (1 / halflife)
    return _recursion((1 - phi) * values, phi, values[0])


def _recursion(x, phi, initial):
    """y_t = phi y_{t-1} + x_t from y_{-1} = initial, vectorised as a scaled cumulative
    sum in blocks that keep phi**-k within float range."""
    out = np.empty(len(x))
    value, block = initial, 2000
    for start in range(0, len(x), block):
        chunk = x[start:start + block]
        powers = phi ** np.arange(len(chunk))
        out[start:start + len(chunk)] = powers * (value * phi + np.cumsum(chunk / powers))
        value = out[start + len(chunk) - 1]
    return out


def write_csv(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.write("timestamp,region,demand_gw,temperature_c,is_workday\n")
        for name, times, demand, temp, workday in rows:
            lines = [f"{t},{name},{d},{c},{w}" for t, d, c, w in zip(times, demand, temp, workday)]
            f.write("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out")
    parser.add_argument("--regions", type=int, default=4)
    parser.add_argument("--days", type=int, default=420)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rows = generate(args.regions, args.days, args.seed)
    write_csv(args.out, rows)
    print(f"wrote {args.out}: {sum(len(r[1]) for r in rows):,} rows, {len(rows)} regions, {args.days} days")


if __name__ == "__main__":
    main()
