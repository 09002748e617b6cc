"""The application: routes, purchases and their answers, the admin API. The request
path reads top to bottom here: dispatch -> route -> purchase -> batcher -> answer."""
