"""Kept only so the landed migrations that name `apps.bots.fields.EncryptedTextField` still
import; the field lives in `apps.core.fields`, import it from there."""

from apps.core.fields import EncryptedTextField

__all__ = ["EncryptedTextField"]
