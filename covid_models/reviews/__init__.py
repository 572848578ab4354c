"""Radiologist review sessions in a real database (SQLite by default, PostgreSQL when a URL is given): the store
(`store`), reviewer identities (`names`) and the sign-in lockout (`sign_in_guard`)."""
