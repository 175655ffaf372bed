"""Privacy: erasing a contact everywhere (LGPD / GDPR)."""
