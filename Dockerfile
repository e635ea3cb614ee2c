# The Kasocki service: Django and socket.io served by daphne on port 8000.
#
#   docker build -t kasocki .
#   docker run -p 8000:8000 -e KAFKA_BOOTSTRAP_SERVERS=kafka:9092 -e DATABASE_URL=postgres://... kasocki
#
# docker-compose.yml runs it with Kafka and PostgreSQL; docs/deployment.md explains the settings.

# The viewer page loads the official socket.io client from npm (STATICFILES_DIRS in
# kasocki_project/settings.py points into node_modules/socket.io-client). Only the
# runtime dependencies are installed; node itself stays out of the final image.
FROM node:24-slim AS js
WORKDIR /build
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund --loglevel=error


FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONPATH=/app \
    DJANGO_SETTINGS_MODULE=kasocki_project.settings \
    DJANGO_DEBUG=0

WORKDIR /app

# Every pinned requirement ships wheels for linux/amd64 and linux/arm64, so no compiler is needed.
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY --from=js /build/node_modules ./node_modules
COPY manage.py ./
COPY kasocki_project ./kasocki_project
COPY kasocki_app ./kasocki_app

# STATIC_ROOT (/app/staticfiles) for a web server or CDN in front. The key is only for this step.
RUN DJANGO_SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput --verbosity 0

# The code stays owned by root and read-only to the user that runs it.
RUN useradd --system --user-group --no-create-home --home-dir /app kasocki
USER kasocki

EXPOSE 8000

# Apply migrations, then hand the process over to daphne (exec: it receives the stop signal).
# With several replicas, run `python manage.py migrate` once as a separate step instead.
CMD ["sh", "-c", "python manage.py migrate --noinput && exec daphne -b 0.0.0.0 -p 8000 kasocki_project.asgi:application"]
