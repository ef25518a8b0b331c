"""The adversarial suite: what an attacker or a careless user would try, and what must hold."""
