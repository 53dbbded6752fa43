"""Gitea Actions as diskci's ``gitea`` CI backend reaches it: the REST client (``client``), how
Gitea's answers become diskci values and errors (``answers``, ``models``), and its webhook deliveries
(``webhooks``). Nothing here touches the database: the backend that keeps diskci's runs maps them."""
