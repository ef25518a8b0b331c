"""Policies: who may see and do what. Imports: casbin only."""
