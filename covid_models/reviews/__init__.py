"""Radiologist review sessions in a real database (SQLite by default, PostgreSQL when a URL is given): the store
(`store`), the values and errors callers use (`records`), tables, engine and upgrades (`schema`), input checks
(`checks`), identities and secrets (`identity`), CSV and summary (`export`), reviewer names (`names`) and the
sign-in lockout (`sign_in_guard`)."""
