"""Create the `admin` superuser once, printing its password that one time."""

from __future__ import annotations

import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Create the 'admin' superuser if it does not exist (password from AIPB_ADMIN_PASSWORD or generated)."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")

    def handle(self, *args, **options):
        username = options["username"]
        if not username or len(username) > 150:
            raise CommandError("username must be 1 to 150 characters")
        User = get_user_model()
        if User.objects.filter(username=username).exists():
            self.stdout.write(f"superuser '{username}' already exists (its password was printed when it was created)")
            return
        password = os.environ.get("AIPB_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        User.objects.create_superuser(username=username, email="", password=password)
        shown = "from AIPB_ADMIN_PASSWORD" if os.environ.get("AIPB_ADMIN_PASSWORD") else password
        self.stdout.write(self.style.SUCCESS(f"created superuser '{username}' with password: {shown}"))
        self.stdout.write("this password is shown only once; change it in the admin or with `manage.py changepassword`")
